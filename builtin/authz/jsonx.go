package authz

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/access"
	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// member is one member of a JSON object, in document order.
type member struct {
	key   string
	value json.RawMessage
}

// members reads a JSON object's members in order. A key twice, even in
// another case, is an error: a checker and a client must not read
// different values.
func members(body []byte) ([]member, error) {
	d := json.NewDecoder(bytes.NewReader(body))
	t, err := d.Token()
	if err != nil {
		return nil, err
	}
	if t != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	var out []member
	seen := map[string]bool{}
	for d.More() {
		t, err := d.Token()
		if err != nil {
			return nil, err
		}
		k, ok := t.(string)
		if !ok {
			return nil, errors.New("malformed object")
		}
		if seen[strings.ToLower(k)] {
			return nil, fmt.Errorf("duplicate key %q", k)
		}
		seen[strings.ToLower(k)] = true
		var v json.RawMessage
		if err := d.Decode(&v); err != nil {
			return nil, err
		}
		out = append(out, member{k, v})
	}
	if _, err := d.Token(); err != nil {
		return nil, err
	}
	if len(bytes.TrimLeft(body[d.InputOffset():], " \t\r\n")) > 0 {
		return nil, errors.New("data after the object")
	}
	return out, nil
}

// writeObject writes members as a JSON object.
func writeObject(ms []member) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range ms {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(m.value)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// replaceMember returns ms with key set to value (appended when absent,
// removed when value is nil).
func replaceMember(ms []member, key string, value json.RawMessage) []member {
	out := make([]member, 0, len(ms)+1)
	done := false
	for _, m := range ms {
		if m.key == key {
			done = true
			if value != nil {
				out = append(out, member{key, value})
			}
			continue
		}
		out = append(out, m)
	}
	if !done && value != nil {
		out = append(out, member{key, value})
	}
	return out
}

// filterStats counts what filterBundle removed.
type filterStats struct {
	match, include, bare int
	kept                 int // entries left
}

// filterBundle removes from a searchset or history Bundle the entries whose
// resource the decision for its type and search mode does not admit, and
// the entries without a resource unless keepBare (nil: none) keeps their
// type. total is lowered by the matches removed. The body comes back
// unchanged when nothing is removed.
func filterBundle(body []byte, decide func(typ, mode string) access.Decision, keepBare func(typ string) bool) ([]byte, filterStats, error) {
	var st filterStats
	if err := access.CheckJSON(body); err != nil {
		return nil, st, err
	}
	ms, err := members(body)
	if err != nil {
		return nil, st, err
	}
	var entries []json.RawMessage
	isBundle := false
	for _, m := range ms {
		if err := exactKey(m.key, "resourceType", "entry", "total"); err != nil {
			return nil, st, err
		}
		switch m.key {
		case "resourceType":
			isBundle = string(m.value) == `"Bundle"`
		case "entry":
			if err := json.Unmarshal(m.value, &entries); err != nil {
				return nil, st, fmt.Errorf("entry: %w", err)
			}
		}
	}
	if !isBundle {
		return nil, st, errors.New("not a Bundle")
	}
	kept := make([]json.RawMessage, 0, len(entries))
	for _, raw := range entries {
		e, err := readEntry(raw)
		if err != nil {
			return nil, st, fmt.Errorf("entry: %w", err)
		}
		mode := "match"
		if e.Search != nil && e.Search.Mode != "" {
			mode = e.Search.Mode
		}
		if len(e.Resource) == 0 || string(e.Resource) == "null" {
			typ := ""
			if e.Request != nil {
				typ = entryType(e.Request.URL)
			}
			if typ == "" {
				typ = entryType(e.FullURL)
			}
			if keepBare != nil && typ != "" && keepBare(typ) {
				kept = append(kept, raw)
			} else {
				st.bare++
			}
			continue
		}
		res, err := access.DecodeResource(e.Resource)
		if err != nil {
			st.match++
			continue
		}
		if mode == "outcome" && res.Type == "OperationOutcome" {
			kept = append(kept, raw)
			continue
		}
		if ok, _ := decide(res.Type, mode).Admits(res); ok {
			kept = append(kept, raw)
			continue
		}
		if mode == "include" {
			st.include++
		} else {
			st.match++
		}
	}
	st.kept = len(kept)
	if len(kept) == len(entries) {
		return body, st, nil
	}
	if len(kept) == 0 {
		ms = replaceMember(ms, "entry", nil)
	} else {
		v, _ := json.Marshal(kept)
		ms = replaceMember(ms, "entry", v)
	}
	if st.match > 0 {
		for _, m := range ms {
			if m.key != "total" {
				continue
			}
			n, err := strconv.Atoi(string(m.value))
			if err != nil {
				return nil, st, errors.New("total is not a number")
			}
			ms = replaceMember(ms, "total", json.RawMessage(strconv.Itoa(max(0, n-st.match))))
			break
		}
	}
	return writeObject(ms), st, nil
}

// exactKey refuses a key that is one of known but for its case: a client
// that matches keys without regard to case would read it as the one the
// gateway did not check.
func exactKey(k string, known ...string) error {
	for _, want := range known {
		if k != want && strings.EqualFold(k, want) {
			return fmt.Errorf("key %q is not %q", k, want)
		}
	}
	return nil
}

// bundleEntry is what filterBundle reads of an entry, by exact key.
type bundleEntry struct {
	FullURL  string
	Resource json.RawMessage
	Search   *struct{ Mode string }
	Request  *struct{ URL string }
}

// readEntry reads an entry's fullUrl, resource, search.mode and
// request.url, matching keys exactly as a FHIR client does (encoding/json
// alone would also take "Resource").
func readEntry(raw json.RawMessage) (*bundleEntry, error) {
	ms, err := members(raw)
	if err != nil {
		return nil, err
	}
	e := &bundleEntry{}
	str := func(v json.RawMessage) string {
		var s string
		json.Unmarshal(v, &s)
		return s
	}
	field := func(v json.RawMessage, key string) string {
		inner, err := members(v)
		if err != nil {
			return ""
		}
		for _, m := range inner {
			if m.key == key {
				return str(m.value)
			}
		}
		return ""
	}
	for _, m := range ms {
		if err := exactKey(m.key, "fullUrl", "resource", "search", "request"); err != nil {
			return nil, err
		}
		switch m.key {
		case "fullUrl":
			e.FullURL = str(m.value)
		case "resource":
			e.Resource = m.value
		case "search":
			e.Search = &struct{ Mode string }{field(m.value, "mode")}
		case "request":
			e.Request = &struct{ URL string }{field(m.value, "url")}
		}
	}
	return e, nil
}

// entryType reads the resource type from an entry's url or fullUrl
// ("Patient/1/_history/2", "http://x/fhir/Patient/1").
func entryType(u string) string {
	u, _, _ = strings.Cut(u, "?")
	segs := strings.Split(strings.Trim(u, "/"), "/")
	for i := len(segs) - 1; i >= 0; i-- {
		if fhirreq.IsResourceType(segs[i]) && i+1 < len(segs) && fhirreq.IsID(segs[i+1]) {
			// the type is the segment before an id; a history path has
			// the type two segments before its version
			if i+2 < len(segs) && segs[i+2] == "_history" || i+2 == len(segs) {
				return segs[i]
			}
		}
	}
	if len(segs) > 0 && fhirreq.IsResourceType(segs[0]) {
		return segs[0]
	}
	return ""
}
