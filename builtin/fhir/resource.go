package fhir

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
	"github.com/omnigate/omnigate/builtin/fhir/internal/validate"
)

func validID(s string) bool { return search.ValidID(s) }

// newID returns a random id (a UUID v4 in its usual form).
func newID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	return string(out[:])
}

// parsed is a resource from a request: its bytes and its decoded form.
type parsed struct {
	typ  string
	raw  []byte
	tree map[string]any
	// idx and idxID cache the index entries computed for id idxID, so that
	// a transaction can compute them before it takes the write lock.
	idx   *search.Entries
	idxID string
	// rest and meta are prepareStamp's split of raw.
	rest []byte
	meta map[string]json.RawMessage
	// links are the strings of raw that a transaction may rewrite (see
	// collectLinks); src is raw as sent once they have been rewritten.
	links []linkSite
	src   []byte
}

// index returns the resource's index entries as resource id.
func (p *parsed) index(id string) *search.Entries {
	if p.idx == nil || p.idxID != id {
		p.idx, p.idxID = search.Index(p.typ, id, p.tree), id
	}
	return p.idx
}

// decodeJSON decodes one JSON object with numbers kept as json.Number.
func decodeJSON(raw []byte) (map[string]any, error) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, describeJSONError(raw, err)
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, errors.New("unexpected data after the JSON value")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("the body is not a JSON object")
	}
	return m, nil
}

// describeJSONError adds the line and column to a syntax error.
func describeJSONError(raw []byte, err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line, col := 1, 1
		for _, c := range raw[:min(int(se.Offset), len(raw))] {
			if c == '\n' {
				line++
				col = 1
			} else {
				col++
			}
		}
		return fmt.Errorf("malformed JSON at line %d, column %d: %v", line, col, se)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("malformed JSON: unexpected end of the body")
	}
	return fmt.Errorf("malformed JSON: %v", err)
}

// parseResource decodes and checks a resource body: valid UTF-8,
// well-formed JSON with numbers a JSON reader keeps exactly, a known
// resourceType equal to want (if want is set), and, as c and the config
// say, the official schema (400 when broken), the core
// StructureDefinitions and the profiles it declares (422 when it fails
// them). Every problem is an issue of the answer.
func (h *Handler) parseResource(raw []byte, want, where string, c checks) (*parsed, error) {
	tree, err := decodeInput(raw, where)
	if err != nil {
		return nil, err
	}
	rt, err := checkResourceType(tree, want, where)
	if err != nil {
		return nil, err
	}
	if c != checkNone {
		if err := h.check(rt, tree, where, c); err != nil {
			return nil, err
		}
	}
	return &parsed{typ: rt, raw: raw, tree: tree}, nil
}

// decodeInput decodes a resource body, refusing with 400 what FHIR's JSON
// rules forbid: an empty body, invalid UTF-8, malformed JSON, numbers
// that a JSON reader would not keep exactly.
func decodeInput(raw []byte, where string) (map[string]any, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, errorf(http.StatusBadRequest, "%sthe request has no resource", where)
	}
	if err := checkUTF8(raw); err != nil {
		return nil, errorf(http.StatusBadRequest, "%s%v", where, err)
	}
	tree, err := decodeJSON(raw)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "%s%v", where, err)
	}
	if issues := checkNumbers(tree, where); len(issues) > 0 {
		return nil, &httpError{status: http.StatusBadRequest, issues: issues}
	}
	return tree, nil
}

// checkResourceType checks the resourceType (known, and want if set) and
// the id of a decoded resource, and returns the type.
func checkResourceType(tree map[string]any, want, where string) (string, error) {
	rt, _ := tree["resourceType"].(string)
	switch {
	case rt == "":
		return "", locErr(http.StatusBadRequest, "resourceType", where+"the resource has no resourceType")
	case !spec.IsResourceType(rt):
		return "", locErr(http.StatusBadRequest, "resourceType", fmt.Sprintf("%sunknown resourceType %q", where, rt))
	case want != "" && rt != want:
		return "", locErr(http.StatusBadRequest, "resourceType", fmt.Sprintf("%sresourceType %q does not match the URL's %q", where, rt, want))
	}
	if id, ok := tree["id"]; ok {
		s, isStr := id.(string)
		if !isStr || !validID(s) {
			return "", locErr(http.StatusBadRequest, rt+".id", where+"invalid id: want 1-64 of A-Z a-z 0-9 - .")
		}
	}
	return rt, nil
}

func locErr(status int, expr, msg string) *httpError {
	is := newIssue(status, msg)
	is.Expression = []string{expr}
	return &httpError{status: status, issues: []issue{is}}
}

// check validates tree as c says: the schema (400 with its issues), then,
// for checkAll, the StructureDefinitions (422). All issues are reported
// together.
func (h *Handler) check(typ string, tree map[string]any, where string, c checks) error {
	issues, err := h.schemaIssues(typ, tree, where)
	if err != nil {
		return err
	}
	schemaFailed := len(issues) > 0
	if c == checkAll {
		issues = mergeIssues(issues, h.conformance(typ, tree, where))
	}
	if hasErrors(issues) {
		return validationError(schemaFailed, issues)
	}
	return nil
}

// mergeIssues adds more to issues, leaving out those at an expression that
// issues already has a problem at (the schema's enumerations and the
// required bindings say the same thing).
func mergeIssues(issues, more []issue) []issue {
	if len(issues) == 0 {
		return more
	}
	at := make(map[string]bool, len(issues))
	for _, is := range issues {
		at[is.Expression[0]] = true
	}
	for _, is := range more {
		if !at[is.Expression[0]] {
			issues = append(issues, is)
		}
	}
	return issues
}

// schemaIssues validates tree against the schema, if validation is on.
func (h *Handler) schemaIssues(typ string, tree map[string]any, where string) ([]issue, error) {
	if h.validator == nil {
		return nil, nil
	}
	return schemaProblems(h.validator, h.cfg.RejectUnknownElements, typ, tree, where)
}

// schemaProblems validates tree against the schema, and each contained
// resource against its own type's; elements the schema does not define
// are problems only with rejectUnknown.
func schemaProblems(v *validate.Validator, rejectUnknown bool, typ string, tree map[string]any, where string) ([]issue, error) {
	var issues []issue
	add := func(prefix, typ string, x any) error {
		probs, err := v.Validate(typ, x)
		if err != nil {
			return err
		}
		for _, p := range probs {
			if p.Unknown && !rejectUnknown {
				continue
			}
			is := newIssue(http.StatusBadRequest, where+p.Message)
			is.Code = "structure"
			is.Expression = []string{prefix + p.Expression}
			issues = append(issues, is)
		}
		return nil
	}
	if err := add("", typ, tree); err != nil {
		return nil, err
	}
	if cs, ok := tree["contained"].([]any); ok {
		for i, c := range cs {
			m, _ := c.(map[string]any)
			ct, _ := m["resourceType"].(string)
			if !spec.IsResourceType(ct) {
				is := newIssue(http.StatusBadRequest, where+"contained resource with unknown resourceType")
				is.Code = "structure"
				is.Expression = []string{fmt.Sprintf("%s.contained[%d]", typ, i)}
				issues = append(issues, is)
				continue
			}
			if err := add(fmt.Sprintf("%s.contained[%d].", typ, i), ct, m); err != nil {
				return nil, err
			}
		}
	}
	// The schema's locations start with the type; inside contained
	// resources drop the repeated type name.
	for i := range issues {
		e := issues[i].Expression[0]
		if j := strings.Index(e, "]."); j > 0 && strings.Contains(e[:j], ".contained[") {
			rest := e[j+2:]
			if k := strings.IndexByte(rest, '.'); k >= 0 {
				issues[i].Expression[0] = e[:j+2] + rest[k+1:]
			} else {
				issues[i].Expression[0] = e[:j+1]
			}
		}
	}
	return issues, nil
}

// member is one top-level member of a JSON object, its value as sent.
type member struct {
	key string
	raw json.RawMessage
}

// members splits a JSON object into its top-level members without
// decoding the values. raw must be well-formed JSON (decodeJSON checked it).
func members(raw []byte) ([]member, error) {
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return nil, errors.New("not a JSON object")
	}
	i++
	var out []member
	for {
		i = skipSpace(raw, i)
		if i < len(raw) && raw[i] == '}' {
			return out, nil
		}
		if i >= len(raw) || raw[i] != '"' {
			return nil, errors.New("malformed JSON object")
		}
		end := skipString(raw, i)
		key := string(raw[i+1 : end-1])
		if bytes.IndexByte(raw[i:end], '\\') >= 0 {
			if err := json.Unmarshal(raw[i:end], &key); err != nil {
				return nil, err
			}
		}
		i = skipSpace(raw, end)
		if i >= len(raw) || raw[i] != ':' {
			return nil, errors.New("malformed JSON object")
		}
		i = skipSpace(raw, i+1)
		vend := skipValue(raw, i)
		if vend <= i {
			return nil, errors.New("malformed JSON value")
		}
		out = append(out, member{key, raw[i:vend]})
		i = skipSpace(raw, vend)
		if i < len(raw) && raw[i] == ',' {
			i++
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] ('"').
func skipString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(b)
}

// skipValue returns the index after the JSON value starting at b[i].
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = skipString(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\n' && b[j] != '\r' && b[j] != '\t' {
		j++
	}
	return j
}

// stamp returns the resource JSON to store: resourceType, the server's id,
// meta with the server's versionId and lastUpdated (the client's other
// meta elements kept), then the client's other members as sent (white space
// removed). tree is updated to match.
func stamp(p *parsed, id string, version int64, updated time.Time) ([]byte, error) {
	if p.rest == nil {
		if err := p.prepareStamp(); err != nil {
			return nil, err
		}
	}
	lastUpdated := updated.UTC().Format("2006-01-02T15:04:05.000Z07:00")
	meta := make(map[string]json.RawMessage, len(p.meta)+2)
	for k, v := range p.meta {
		meta[k] = v
	}
	meta["versionId"] = marshal(strconv.FormatInt(version, 10))
	meta["lastUpdated"] = marshal(lastUpdated)
	var b bytes.Buffer
	b.Grow(len(p.rest) + len(id) + 128)
	b.WriteString(`{"resourceType":`)
	b.Write(marshal(p.typ))
	b.WriteString(`,"id":`)
	b.Write(marshal(id))
	b.WriteString(`,"meta":`)
	b.Write(marshal(meta))
	b.Write(p.rest)
	b.WriteByte('}')
	p.tree["id"] = id
	tm, _ := p.tree["meta"].(map[string]any)
	if tm == nil {
		tm = map[string]any{}
		p.tree["meta"] = tm
	}
	tm["versionId"] = strconv.FormatInt(version, 10)
	tm["lastUpdated"] = lastUpdated
	return b.Bytes(), nil
}

// prepareStamp splits the resource for stamp: the client's meta, and its
// other members compacted (each preceded by a comma).
func (p *parsed) prepareStamp() error {
	ms, err := members(p.raw)
	if err != nil {
		return fmt.Errorf("re-read resource: %w", err)
	}
	p.meta = map[string]json.RawMessage{}
	var b bytes.Buffer
	b.Grow(len(p.raw))
	for _, m := range ms {
		switch m.key {
		case "meta":
			if err := json.Unmarshal(m.raw, &p.meta); err != nil {
				return locErr(http.StatusBadRequest, p.typ+".meta", "meta must be an object")
			}
			continue
		case "resourceType", "id":
			continue
		}
		b.WriteByte(',')
		b.Write(marshal(m.key))
		b.WriteByte(':')
		if err := json.Compact(&b, m.raw); err != nil {
			return fmt.Errorf("compact %s: %w", m.key, err)
		}
	}
	p.rest = b.Bytes()
	if p.rest == nil {
		p.rest = []byte{}
	}
	return nil
}
