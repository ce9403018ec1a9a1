package main

import (
	"bytes"
	"encoding/json"
	"strings"
)

// This file checks resources against the patient's compartment by reading
// their JSON in place, without encoding/json and without allocating per
// resource. Inside the sandbox every loop iteration and nearly every
// function call costs a check that the call may go on (tens of ns), and
// allocation is dear: encoding/json made a search of 60 Observations cost
// ≈ 10 ms of the plugin's CPU budget, this reading a fraction of a
// millisecond.

// linkPath is one compartment link path, split: the top-level element and
// the steps below it ("participant.actor": participant, [actor]).
type linkPath struct {
	top  string
	rest []string
}

// linkPaths holds compartment's paths split once.
var linkPaths = func() map[string][]linkPath {
	m := make(map[string][]linkPath, len(compartment))
	for typ, l := range compartment {
		for _, p := range l.paths {
			top, rest, _ := strings.Cut(p, ".")
			lp := linkPath{top: top}
			if rest != "" {
				lp.rest = strings.Split(rest, ".")
			}
			m[typ] = append(m[typ], lp)
		}
	}
	return m
}()

// allLinked reports whether every resource in extract (a JSON array of
// resources, as json_extract returns them) is in the patient's
// compartment. OperationOutcomes (search warnings) pass; anything that is
// not a valid JSON array of objects does not.
func allLinked(extract []byte, patient string) bool {
	b := extract
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '[' {
		return false
	}
	fields := make([]field, 0, 16)
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == ']' {
		return skipWS(b, i+1) == len(b)
	}
	for {
		var ok bool
		if fields, i, ok = object(b, i, fields[:0]); !ok || !resourceLinked(b, fields, patient) {
			return false
		}
		i = skipWS(b, i)
		switch {
		case i < len(b) && b[i] == ',':
			i = skipWS(b, i+1)
		case i < len(b) && b[i] == ']':
			return skipWS(b, i+1) == len(b)
		default:
			return false
		}
	}
}

// field is one member of an object: its key (still escaped, as in the
// JSON) and where its value starts and ends.
type field struct {
	key        []byte
	start, end int
}

// object reads the object at b[i] into fields (appended) and returns the
// index after it; ok is false when it is not a valid JSON object.
func object(b []byte, i int, fields []field) (_ []field, next int, ok bool) {
	if i >= len(b) || b[i] != '{' {
		return fields, 0, false
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return fields, i + 1, true
	}
	for {
		kend := skipString(b, i)
		if kend < 0 {
			return fields, 0, false
		}
		key := b[i+1 : kend-1]
		i = skipWS(b, kend)
		if i >= len(b) || b[i] != ':' {
			return fields, 0, false
		}
		start := skipWS(b, i+1)
		end := skipValue(b, start)
		if end < 0 {
			return fields, 0, false
		}
		fields = append(fields, field{key: key, start: start, end: end})
		i = skipWS(b, end)
		switch {
		case i < len(b) && b[i] == ',':
			i = skipWS(b, i+1)
		case i < len(b) && b[i] == '}':
			return fields, i + 1, true
		default:
			return fields, 0, false
		}
	}
}

// lookup returns the value of the member called name, or ok false; of
// duplicate members the last counts, as with encoding/json.
func lookup(b []byte, fields []field, name string) (value []byte, ok bool) {
	for i := len(fields) - 1; i >= 0; i-- {
		if f := fields[i]; keyIs(f.key, name) {
			return b[f.start:f.end], true
		}
	}
	return nil, false
}

// member returns the value of the member called name of the (valid)
// object v, without collecting its members; of duplicates the last counts.
func member(v []byte, name string) (value []byte, ok bool) {
	i := skipWS(v, 1)
	for i < len(v) && v[i] == '"' {
		kend := skipString(v, i)
		if kend < 0 {
			return nil, false
		}
		key := v[i+1 : kend-1]
		start := skipWS(v, skipWS(v, kend)+1) // past the colon
		end := skipValue(v, start)
		if end < 0 {
			return nil, false
		}
		if keyIs(key, name) {
			value, ok = v[start:end], true
		}
		if i = skipWS(v, end); i < len(v) && v[i] == ',' {
			i = skipWS(v, i+1)
		}
	}
	return value, ok
}

// keyIs compares an escaped key with a name.
func keyIs(key []byte, name string) bool {
	if string(key) == name {
		return true
	}
	if len(key) <= len(name) || !containsByte(key, '\\') {
		return false // an escape only makes a key longer than its text
	}
	s, ok := unescape(key)
	return ok && s == name
}

// rawString returns the bytes of the string a JSON value holds, escapes
// decoded, or ok false when it is not a string.
func rawString(v []byte) ([]byte, bool) {
	if len(v) < 2 || v[0] != '"' {
		return nil, false
	}
	raw := v[1 : len(v)-1]
	if !containsByte(raw, '\\') {
		return raw, true
	}
	s, ok := unescape(raw)
	return []byte(s), ok
}

// unescape decodes a string's escapes (rare in FHIR): encoding/json on a
// few bytes.
func unescape(raw []byte) (string, bool) {
	var s string
	err := json.Unmarshal(append(append([]byte{'"'}, raw...), '"'), &s)
	return s, err == nil
}

func containsByte(b []byte, c byte) bool {
	for _, x := range b {
		if x == c {
			return true
		}
	}
	return false
}

// resourceLinked reports whether one resource (an object's fields) is in
// the patient's compartment.
func resourceLinked(b []byte, fields []field, patient string) bool {
	var typ, id []byte
	if v, ok := lookup(b, fields, "resourceType"); ok {
		typ, _ = rawString(v)
	}
	if v, ok := lookup(b, fields, "id"); ok {
		id, _ = rawString(v)
	}
	switch {
	case string(typ) == "OperationOutcome":
		return true
	case string(typ) == "Patient" && string(id) == patient:
		return true
	}
	paths, ok := linkPaths[string(typ)]
	if !ok {
		return false
	}
	for _, p := range paths {
		if v, ok := lookup(b, fields, p.top); ok && refersTo(v, p.rest, patient) {
			return true
		}
	}
	return false
}

// refersTo walks path through the (valid) JSON value v, through arrays,
// to References, and reports whether one refers to the patient.
func refersTo(v []byte, path []string, patient string) bool {
	if len(v) == 0 {
		return false
	}
	switch v[0] {
	case '[':
		i := skipWS(v, 1)
		for i < len(v) && v[i] != ']' {
			end := skipValue(v, i)
			if end < 0 {
				return false
			}
			if refersTo(v[i:end], path, patient) {
				return true
			}
			if i = skipWS(v, end); i < len(v) && v[i] == ',' {
				i = skipWS(v, i+1)
			}
		}
		return false
	case '{':
		if len(path) > 0 {
			next, ok := member(v, path[0])
			return ok && refersTo(next, path[1:], patient)
		}
		ref, ok := member(v, "reference")
		if !ok {
			return false
		}
		s, ok := rawString(ref)
		return ok && isPatientRef(s, patient)
	}
	return false
}

// isPatientRef matches "Patient/123", absolute URLs ending in it, and
// versioned references.
func isPatientRef(ref []byte, patient string) bool {
	if i := bytes.Index(ref, []byte("/_history/")); i >= 0 {
		ref = ref[:i]
	}
	n := len(ref) - len(patient)
	if n < len("Patient/") || string(ref[n:]) != patient || string(ref[n-len("Patient/"):n]) != "Patient/" {
		return false
	}
	return n == len("Patient/") || ref[n-len("Patient/")-1] == '/'
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

// skipString returns the index after the string at b[i], or -1 when it is
// not a valid JSON string.
func skipString(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1
		case c < 0x20:
			return -1
		case c == '\\':
			i++
			if i >= len(b) {
				return -1
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(b) {
					return -1
				}
				for _, h := range b[i+1 : i+5] {
					if !isHex(h) {
						return -1
					}
				}
				i += 4
			default:
				return -1
			}
		}
	}
	return -1
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

// skipValue returns the index after the JSON value at b[i], or -1 when
// there is none (or it is not valid JSON).
func skipValue(b []byte, i int) int {
	return skipValueDepth(b, i, 0)
}

// maxDepth bounds nesting, as encoding/json does (10000).
const maxDepth = 10000

func skipValueDepth(b []byte, i, depth int) int {
	if i >= len(b) || depth > maxDepth {
		return -1
	}
	switch c := b[i]; {
	case c == '"':
		return skipString(b, i)
	case c == '{':
		i = skipWS(b, i+1)
		if i < len(b) && b[i] == '}' {
			return i + 1
		}
		for {
			if i = skipString(b, i); i < 0 {
				return -1
			}
			if i = skipWS(b, i); i >= len(b) || b[i] != ':' {
				return -1
			}
			if i = skipValueDepth(b, skipWS(b, i+1), depth+1); i < 0 {
				return -1
			}
			switch i = skipWS(b, i); {
			case i < len(b) && b[i] == ',':
				i = skipWS(b, i+1)
			case i < len(b) && b[i] == '}':
				return i + 1
			default:
				return -1
			}
		}
	case c == '[':
		i = skipWS(b, i+1)
		if i < len(b) && b[i] == ']' {
			return i + 1
		}
		for {
			if i = skipValueDepth(b, i, depth+1); i < 0 {
				return -1
			}
			switch i = skipWS(b, i); {
			case i < len(b) && b[i] == ',':
				i = skipWS(b, i+1)
			case i < len(b) && b[i] == ']':
				return i + 1
			default:
				return -1
			}
		}
	case c == 't':
		return literal(b, i, "true")
	case c == 'f':
		return literal(b, i, "false")
	case c == 'n':
		return literal(b, i, "null")
	case c == '-' || '0' <= c && c <= '9':
		return skipNumber(b, i)
	}
	return -1
}

func literal(b []byte, i int, lit string) int {
	if len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit {
		return i + len(lit)
	}
	return -1
}

// skipNumber returns the index after the JSON number at b[i], or -1.
func skipNumber(b []byte, i int) int {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return -1
		}
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return -1
		}
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	}
	return i
}
