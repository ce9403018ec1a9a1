package fhir

// Links of a resource: the strings a transaction rewrites. R4 has a
// transaction replace the fullUrl of an entry wherever another entry links
// to it: in references (Reference.reference), in elements of type uri, url,
// oid and uuid, and in the href of <a> and the src of <img> in the
// narrative; never in an element of another type (an Identifier.value
// equal to a fullUrl is data, and stays as sent), nor in one of type
// canonical, which R4 excludes. A conditional reference
// ("Patient?identifier=…") is a Reference.reference only. The element types
// come from the official StructureDefinitions (spec.Elements).
//
// The walker reads the resource's JSON as sent, so that a rewrite replaces
// the string in place and leaves every other byte as the client wrote it;
// the decoded tree is updated to match.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// linkKind says what a string of a resource is to a transaction.
type linkKind uint8

const (
	// kindOther is a string of another type: never rewritten.
	kindOther linkKind = iota
	// kindURI is an element of type uri, url, oid or uuid.
	kindURI
	// kindRef is Reference.reference.
	kindRef
	// kindDiv is Narrative.div, whose <a href> and <img src> are links.
	kindDiv
)

// pathStep is one step from a resource down to one of its values: a member
// (its key is raw[keyStart:keyEnd], still JSON-escaped) or, when index >= 0,
// an array item.
type pathStep struct {
	keyStart, keyEnd int32
	index            int32
}

// linkSite is one string of a resource that a transaction may rewrite.
type linkSite struct {
	kind linkKind
	// value is the string, decoded.
	value string
	// start and end delimit the JSON string in the resource's bytes,
	// quotes included.
	start, end int
	// path leads from the resource to the string.
	path []pathStep
	// cur is the string as the tree holds it now (value until rewritten).
	cur string
}

// linkWalker walks a resource's JSON guided by the element types.
type linkWalker struct {
	raw []byte
	// all makes the walker visit the strings of other types too.
	all   bool
	path  []pathStep
	visit func(w *linkWalker, kind linkKind, start, end int)
}

// walkLinks calls visit for each string of resource raw (of type typ, well
// formed JSON) that can be a link, in document order; with all, for every
// string. In visit, w.path is the path of the string (valid until visit
// returns).
func walkLinks(raw []byte, typ string, all bool, visit func(w *linkWalker, kind linkKind, start, end int)) {
	w := &linkWalker{raw: raw, all: all, visit: visit, path: make([]pathStep, 0, 16)}
	i := skipSpace(raw, 0)
	if i < len(raw) && raw[i] == '{' {
		w.object(i, typ)
	}
}

// decodeString returns the JSON string token tok (quotes included)
// decoded.
func decodeString(tok []byte) string {
	if bytes.IndexByte(tok, '\\') < 0 && utf8.Valid(tok) {
		return string(tok[1 : len(tok)-1])
	}
	var s string
	if json.Unmarshal(tok, &s) != nil {
		return ""
	}
	return s
}

// elementOf returns the context and kind of member key of an object of
// context ctx ("" for an element the tables do not know).
func elementOf(ctx string, key []byte) (string, linkKind) {
	if ctx == "" {
		return "", kindOther
	}
	if len(key) > 1 && key[0] == '_' {
		// The id and extensions of a primitive value.
		return "Element", kindOther
	}
	if ctx == "Reference" && string(key) == "reference" {
		return "", kindRef
	}
	switch t := spec.Elements[ctx][string(key)]; t {
	case "":
		return "", kindOther
	case "uri", "url", "oid", "uuid":
		return "", kindURI
	case "xhtml":
		return "", kindDiv
	default:
		return t, kindOther
	}
}

// value walks the JSON value at raw[i] and returns the index after it.
// ctx is the context of an object value ("Resource": that of its
// resourceType); kind is that of a string value.
func (w *linkWalker) value(i int, ctx string, kind linkKind) int {
	raw := w.raw
	if i >= len(raw) {
		return i
	}
	switch raw[i] {
	case '"':
		end := skipString(raw, i)
		if kind != kindOther || w.all {
			w.visit(w, kind, i, end)
		}
		return end
	case '{':
		if ctx == "" && !w.all {
			return skipValue(raw, i)
		}
		return w.object(i, ctx)
	case '[':
		if ctx == "" && kind == kindOther && !w.all {
			return skipValue(raw, i)
		}
		j := skipSpace(raw, i+1)
		for n := int32(0); j < len(raw) && raw[j] != ']'; n++ {
			w.path = append(w.path, pathStep{index: n})
			j = skipSpace(raw, w.value(j, ctx, kind))
			w.path = w.path[:len(w.path)-1]
			if j < len(raw) && raw[j] == ',' {
				j = skipSpace(raw, j+1)
			}
		}
		return j + 1
	}
	return skipValue(raw, i)
}

// object walks the object at raw[i].
func (w *linkWalker) object(i int, ctx string) int {
	raw := w.raw
	if ctx == "Resource" {
		ctx = resourceTypeOf(raw, i)
	}
	j := skipSpace(raw, i+1)
	for j < len(raw) && raw[j] != '}' {
		if raw[j] != '"' {
			return skipValue(raw, i) // not reached for well-formed JSON
		}
		kstart, kend := j, skipString(raw, j)
		key := raw[kstart+1 : kend-1]
		j = skipSpace(raw, kend)
		if j < len(raw) && raw[j] == ':' {
			j = skipSpace(raw, j+1)
		}
		var cctx string
		var kind linkKind
		if bytes.IndexByte(key, '\\') >= 0 {
			cctx, kind = elementOf(ctx, []byte(decodeString(raw[kstart:kend])))
		} else {
			cctx, kind = elementOf(ctx, key)
		}
		w.path = append(w.path, pathStep{keyStart: int32(kstart + 1), keyEnd: int32(kend - 1), index: -1})
		j = skipSpace(raw, w.value(j, cctx, kind))
		w.path = w.path[:len(w.path)-1]
		if j < len(raw) && raw[j] == ',' {
			j = skipSpace(raw, j+1)
		}
	}
	return j + 1
}

// resourceTypeOf returns the resourceType of the object at raw[i], "" if
// it has none or an unknown one.
func resourceTypeOf(raw []byte, i int) string {
	j := skipSpace(raw, i+1)
	for j < len(raw) && raw[j] == '"' {
		kend := skipString(raw, j)
		key := raw[j+1 : kend-1]
		j = skipSpace(raw, kend)
		if j < len(raw) && raw[j] == ':' {
			j = skipSpace(raw, j+1)
		}
		vend := skipValue(raw, j)
		if string(key) == "resourceType" && j < len(raw) && raw[j] == '"' {
			if t := decodeString(raw[j:vend]); spec.IsResourceType(t) {
				return t
			}
			return ""
		}
		j = skipSpace(raw, vend)
		if j < len(raw) && raw[j] == ',' {
			j = skipSpace(raw, j+1)
		}
	}
	return ""
}

// formatPath renders path as a FHIRPath-like location below typ
// ("Encounter.participant[0].individual.reference").
func formatPath(raw []byte, typ string, path []pathStep) string {
	var b strings.Builder
	b.WriteString(typ)
	for _, s := range path {
		if s.index >= 0 {
			fmt.Fprintf(&b, "[%d]", s.index)
			continue
		}
		b.WriteByte('.')
		b.WriteString(decodeString(raw[s.keyStart-1 : s.keyEnd+1]))
	}
	return b.String()
}

// isConditionalRef reports whether a reference is a search ("Type?query").
func isConditionalRef(s string) bool {
	i := strings.IndexByte(s, '?')
	return i > 0 && spec.IsResourceType(s[:i])
}

// collectLinks returns the links of resource raw (of type typ) that a
// transaction must look at: references, uris and narrative links equal to
// one of fullURLs, and conditional references.
func collectLinks(raw []byte, typ string, fullURLs map[string]bool) []linkSite {
	var out []linkSite
	var steps []pathStep // the paths of all sites, one after the other
	walkLinks(raw, typ, false, func(w *linkWalker, kind linkKind, start, end int) {
		tok := raw[start:end]
		switch kind {
		case kindURI, kindRef:
			body := tok[1 : len(tok)-1]
			plain := bytes.IndexByte(body, '\\') < 0 && utf8.Valid(body)
			if plain {
				// The usual case, without decoding.
				if !fullURLs[string(body)] && !(kind == kindRef && bytes.IndexByte(body, '?') > 0 && isConditionalRef(string(body))) {
					return
				}
				break
			}
			v := decodeString(tok)
			if !fullURLs[v] && !(kind == kindRef && isConditionalRef(v)) {
				return
			}
		case kindDiv:
			if len(fullURLs) == 0 || !bytes.Contains(tok, []byte("href")) && !bytes.Contains(tok, []byte("src")) {
				return
			}
			hit := false
			narrativeLinks(decodeString(tok), func(v string) (string, bool) {
				hit = hit || fullURLs[v]
				return "", false
			})
			if !hit {
				return
			}
		default:
			return
		}
		v := decodeString(tok)
		n := len(steps)
		steps = append(steps, w.path...)
		out = append(out, linkSite{kind: kind, value: v, cur: v, start: start, end: end, path: steps[n:len(steps):len(steps)]})
	})
	return out
}

// want returns the value a transaction gives the site: a fullUrl (refs)
// in a reference, a uri or the narrative; a conditional reference (cond)
// in a reference; else the value as sent.
func (s *linkSite) want(refs, cond map[string]string) string {
	switch s.kind {
	case kindURI:
		if to, ok := refs[s.value]; ok {
			return to
		}
	case kindRef:
		if to, ok := refs[s.value]; ok {
			return to
		}
		if to, ok := cond[s.value]; ok {
			return to
		}
	case kindDiv:
		if div, ok := rewriteNarrative(s.value, refs); ok {
			return div
		}
	}
	return s.value
}

// rewriteLinks gives each link of p (p.links) its new value (see want),
// in p's bytes and tree. It starts from the bytes as sent every time, so
// that a transaction that runs again rewrites them again.
func (p *parsed) rewriteLinks(refs, cond map[string]string) {
	if len(p.links) == 0 {
		return
	}
	wants := make([]string, len(p.links))
	changed := false
	for i := range p.links {
		s := &p.links[i]
		wants[i] = s.want(refs, cond)
		changed = changed || wants[i] != s.cur
	}
	if !changed {
		return
	}
	if p.src == nil {
		p.src = p.raw
	}
	raw := p.src
	out := make([]byte, 0, len(raw)+16*len(p.links))
	last := 0
	for i := range p.links {
		s := &p.links[i]
		if wants[i] != s.value {
			out = append(out, raw[last:s.start]...)
			out = appendJSONString(out, wants[i])
			last = s.end
		}
		if wants[i] != s.cur {
			setAt(p.tree, raw, s.path, s.cur, wants[i])
			s.cur = wants[i]
		}
	}
	p.raw = append(out, raw[last:]...)
	p.rest, p.meta, p.idx = nil, nil, nil
}

// setAt sets the string at path in tree to to, if it is from (a later
// duplicate key may have replaced it in the tree).
func setAt(tree map[string]any, raw []byte, path []pathStep, from, to string) {
	if len(path) == 0 {
		return
	}
	var cur any = tree
	for _, s := range path[:len(path)-1] {
		switch c := cur.(type) {
		case map[string]any:
			if k := raw[s.keyStart:s.keyEnd]; bytes.IndexByte(k, '\\') < 0 && utf8.Valid(k) {
				cur = c[string(k)]
			} else {
				cur = c[decodeString(raw[s.keyStart-1:s.keyEnd+1])]
			}
		case []any:
			if s.index < 0 || int(s.index) >= len(c) {
				return
			}
			cur = c[s.index]
		default:
			return
		}
	}
	last := path[len(path)-1]
	switch c := cur.(type) {
	case map[string]any:
		k := decodeString(raw[last.keyStart-1 : last.keyEnd+1])
		if v, ok := c[k].(string); ok && v == from {
			c[k] = to
		}
	case []any:
		if last.index >= 0 && int(last.index) < len(c) {
			if v, ok := c[last.index].(string); ok && v == from {
				c[last.index] = to
			}
		}
	}
}

// appendJSONString appends s as a JSON string, escaping only what JSON
// requires (a narrative keeps its < and >).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		case c < 0x20:
			b = append(b, `\u00`...)
			b = append(b, "0123456789abcdef"[c>>4], "0123456789abcdef"[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// rewriteNarrative replaces the href of <a> and the src of <img> elements
// of an XHTML narrative that are keys of refs. It reports whether it
// changed anything.
func rewriteNarrative(div string, refs map[string]string) (string, bool) {
	if len(refs) == 0 {
		return div, false
	}
	return narrativeLinks(div, func(v string) (string, bool) {
		to, ok := refs[v]
		return to, ok
	})
}

// narrativeLinks calls f with the value (entities decoded) of every href of
// an <a> and src of an <img> in div, and replaces the values f returns ok
// for. It returns the new div and whether it changed. Comments, CDATA
// sections and processing instructions are skipped; markup it cannot read
// is left as it is.
func narrativeLinks(div string, f func(v string) (string, bool)) (string, bool) {
	var b strings.Builder
	last, changed := 0, false
	for i := 0; i < len(div); {
		lt := strings.IndexByte(div[i:], '<')
		if lt < 0 {
			break
		}
		i += lt
		rest := div[i:]
		switch {
		case strings.HasPrefix(rest, "<!--"):
			end := strings.Index(rest[4:], "-->")
			if end < 0 {
				i = len(div)
				continue
			}
			i += 4 + end + 3
			continue
		case strings.HasPrefix(rest, "<![CDATA["):
			end := strings.Index(rest, "]]>")
			if end < 0 {
				i = len(div)
				continue
			}
			i += end + 3
			continue
		case strings.HasPrefix(rest, "<?"), strings.HasPrefix(rest, "<!"), strings.HasPrefix(rest, "</"):
			end := strings.IndexByte(rest, '>')
			if end < 0 {
				i = len(div)
				continue
			}
			i += end + 1
			continue
		}
		// A start tag: its name, then attributes.
		j := i + 1
		for j < len(div) && !isXMLSpace(div[j]) && div[j] != '>' && div[j] != '/' {
			j++
		}
		name := div[i+1 : j]
		if k := strings.IndexByte(name, ':'); k >= 0 {
			name = name[k+1:] // a prefixed name (h:a)
		}
		attr := ""
		switch name {
		case "a":
			attr = "href"
		case "img":
			attr = "src"
		}
		for j < len(div) {
			for j < len(div) && isXMLSpace(div[j]) {
				j++
			}
			if j >= len(div) || div[j] == '>' || div[j] == '/' {
				break
			}
			ns := j
			for j < len(div) && div[j] != '=' && !isXMLSpace(div[j]) && div[j] != '>' && div[j] != '/' {
				j++
			}
			an := div[ns:j]
			for j < len(div) && isXMLSpace(div[j]) {
				j++
			}
			if j >= len(div) || div[j] != '=' {
				continue // an attribute without a value: not XML
			}
			j++
			for j < len(div) && isXMLSpace(div[j]) {
				j++
			}
			if j >= len(div) || div[j] != '"' && div[j] != '\'' {
				continue
			}
			q := div[j]
			vend := strings.IndexByte(div[j+1:], q)
			if vend < 0 {
				j = len(div)
				break
			}
			vs, ve := j+1, j+1+vend
			j = ve + 1
			if attr == "" || an != attr {
				continue
			}
			if to, ok := f(xmlUnescape(div[vs:ve])); ok {
				b.WriteString(div[last:vs])
				b.WriteString(xmlEscape(to))
				last, changed = ve, true
			}
		}
		if k := strings.IndexByte(div[j:], '>'); k >= 0 {
			i = j + k + 1
		} else {
			i = len(div)
		}
	}
	if !changed {
		return div, false
	}
	b.WriteString(div[last:])
	return b.String(), true
}

func isXMLSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// xmlUnescape decodes the predefined entities and character references of
// an attribute value.
func xmlUnescape(s string) string {
	if strings.IndexByte(s, '&') < 0 {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '&' {
			b.WriteByte(s[i])
			continue
		}
		end := strings.IndexByte(s[i:], ';')
		if end < 0 {
			b.WriteString(s[i:])
			break
		}
		ent := s[i+1 : i+end]
		switch {
		case ent == "amp":
			b.WriteByte('&')
		case ent == "lt":
			b.WriteByte('<')
		case ent == "gt":
			b.WriteByte('>')
		case ent == "quot":
			b.WriteByte('"')
		case ent == "apos":
			b.WriteByte('\'')
		case strings.HasPrefix(ent, "#x"):
			n, err := strconv.ParseUint(ent[2:], 16, 32)
			if err != nil {
				b.WriteString(s[i : i+end+1])
			} else {
				b.WriteRune(rune(n))
			}
		case strings.HasPrefix(ent, "#"):
			n, err := strconv.ParseUint(ent[1:], 10, 32)
			if err != nil {
				b.WriteString(s[i : i+end+1])
			} else {
				b.WriteRune(rune(n))
			}
		default:
			b.WriteString(s[i : i+end+1])
		}
		i += end
	}
	return b.String()
}

// xmlEscape escapes an attribute value (either quote).
func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&apos;").Replace(s)
}
