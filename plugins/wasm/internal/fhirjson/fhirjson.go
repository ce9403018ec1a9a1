// Package fhirjson rewrites and extracts top-level elements of FHIR JSON
// resources, and of every resource of a Bundle, for the wasm host
// functions json_mask and json_extract. It works on byte spans of the
// document (validated once), so a 20 KB Bundle costs tens
// of microseconds, and it keeps the order of the elements it does not
// touch.
package fhirjson

import (
	"bytes"
	"encoding/json"
	"errors"
)

var (
	errInvalid   = errors.New("invalid JSON")
	errNotObject = errors.New("not a JSON object")
)

// member is one "key": value of an object, as spans of the document.
type member struct {
	key        []byte // the key, unescaped
	start, end int    // the whole member, from the key's quote to the value's end
	val        []byte // the value
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			return -1
		}
		i += j
		n := 0 // backslashes before the quote: odd escapes it
		for k := i - 1; k >= 0 && b[k] == '\\'; k-- {
			n++
		}
		if n%2 == 0 {
			return i + 1
		}
	}
	return -1
}

// structural marks the bytes skipValue stops at inside objects and arrays.
var structural = [256]bool{'"': true, '{': true, '}': true, '[': true, ']': true}

// skipValue returns the index after the value starting at b[i]. The
// document has been validated, so only brackets and strings matter.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			for i < len(b) && !structural[b[i]] {
				i++
			}
			if i == len(b) {
				return -1
			}
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
				if i < 0 {
					return -1
				}
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return -1
	}
	for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' && b[i] != ' ' && b[i] != '\n' && b[i] != '\t' && b[i] != '\r' {
		i++
	}
	return i
}

// members calls f for each member of the object at b (whole document or
// a value span).
func members(b []byte, f func(m member) error) error {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return errNotObject
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return nil
	}
	for i < len(b) {
		if b[i] != '"' {
			return errInvalid
		}
		start := i
		kend := skipString(b, i)
		if kend < 0 {
			return errInvalid
		}
		key := b[i+1 : kend-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			var k string
			if err := json.Unmarshal(b[i:kend], &k); err != nil {
				return errInvalid
			}
			key = []byte(k)
		}
		i = skipWS(b, kend)
		if i >= len(b) || b[i] != ':' {
			return errInvalid
		}
		vstart := skipWS(b, i+1)
		vend := skipValue(b, vstart)
		if vend < 0 {
			return errInvalid
		}
		if err := f(member{key: key, start: start, end: vend, val: b[vstart:vend]}); err != nil {
			return err
		}
		i = skipWS(b, vend)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
			continue
		}
		if i < len(b) && b[i] == '}' {
			return nil
		}
		return errInvalid
	}
	return errInvalid
}

// elements calls f for each element of the array at b.
func elements(b []byte, f func(v []byte) error) error {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '[' {
		return errInvalid
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == ']' {
		return nil
	}
	for i < len(b) {
		end := skipValue(b, i)
		if end < 0 {
			return errInvalid
		}
		if err := f(b[i:end]); err != nil {
			return err
		}
		i = skipWS(b, end)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
			continue
		}
		if i < len(b) && b[i] == ']' {
			return nil
		}
		return errInvalid
	}
	return errInvalid
}

// hasKey reports whether key is one of fields, without allocating.
func hasKey(fields []string, key []byte) bool {
	for _, f := range fields {
		if f == string(key) {
			return true
		}
	}
	return false
}

// isBundle reports whether the object's top-level resourceType is Bundle.
func isBundle(obj []byte) bool {
	i := skipWS(obj, 0)
	return i < len(obj) && obj[i] == '{' && isBundleAt(obj, i)
}

// Mask returns a copy of the resource in body with the top-level elements
// named in fields replaced by repl (a JSON value), or removed when repl is
// empty, and how many it replaced. In a Bundle, it masks every
// entry.resource (and nested Bundles) instead of the Bundle itself.
func Mask(body []byte, fields []string, repl []byte) ([]byte, int, error) {
	if len(repl) > 0 && !json.Valid(repl) {
		return nil, 0, errors.New("replacement is not JSON")
	}
	if !valid(body) {
		return nil, 0, errInvalid
	}
	i := skipWS(body, 0)
	if i >= len(body) || body[i] != '{' {
		return nil, 0, errNotObject
	}
	n := 0
	out, _, err := mask(make([]byte, 0, len(body)), body, i, fields, repl, &n)
	return out, n, err
}

// mask appends the masked object that starts at b[i] to out and returns
// the index after it. It reads every byte once: values it copies are
// skipped over, containers it masks inside are walked.
func mask(out, b []byte, i int, fields []string, repl []byte, n *int) ([]byte, int, error) {
	bundle := isBundleAt(b, i)
	out = append(out, '{')
	first := true
	i = skipWS(b, i+1)
	for i < len(b) && b[i] != '}' {
		kstart := i
		kend := skipString(b, i)
		if kend < 0 {
			return nil, 0, errInvalid
		}
		key := b[i+1 : kend-1]
		i = skipWS(b, kend)
		if i >= len(b) || b[i] != ':' {
			return nil, 0, errInvalid
		}
		v := skipWS(b, i+1)
		var end int
		switch {
		case bundle && string(key) == "entry" && v < len(b) && b[v] == '[':
			out = appendSep(out, &first)
			out = append(out, b[kstart:v]...)
			var err error
			if out, end, err = maskEntries(out, b, v, fields, repl, n); err != nil {
				return nil, 0, err
			}
		case !bundle && hasKey(fields, unescapedKey(b[kstart:kend], key)):
			*n++
			if end = skipValue(b, v); end < 0 {
				return nil, 0, errInvalid
			}
			if len(repl) > 0 {
				out = appendSep(out, &first)
				out = append(out, b[kstart:v]...)
				out = append(out, repl...)
			}
		default:
			if end = skipValue(b, v); end < 0 {
				return nil, 0, errInvalid
			}
			out = appendSep(out, &first)
			out = append(out, b[kstart:end]...)
		}
		i = skipWS(b, end)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
		}
	}
	if i >= len(b) {
		return nil, 0, errInvalid
	}
	return append(out, '}'), i + 1, nil
}

func appendSep(out []byte, first *bool) []byte {
	if !*first {
		out = append(out, ',')
	}
	*first = false
	return out
}

// unescapedKey returns key, or the decoded form of the quoted key q when it
// holds escapes.
func unescapedKey(q, key []byte) []byte {
	if bytes.IndexByte(key, '\\') < 0 {
		return key
	}
	var k string
	if json.Unmarshal(q, &k) != nil {
		return key
	}
	return []byte(k)
}

// isBundleAt reports whether the object at b[i] has resourceType Bundle,
// reading members only up to resourceType (usually the first).
func isBundleAt(b []byte, i int) bool {
	i = skipWS(b, i+1)
	for i < len(b) && b[i] == '"' {
		kend := skipString(b, i)
		if kend < 0 {
			return false
		}
		key := b[i+1 : kend-1]
		i = skipWS(b, kend)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		v := skipWS(b, i+1)
		end := skipValue(b, v)
		if end < 0 {
			return false
		}
		if string(key) == "resourceType" {
			return string(b[v:end]) == `"Bundle"`
		}
		i = skipWS(b, end)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
		}
	}
	return false
}

// maskEntries appends the Bundle.entry array at b[i], masking each
// entry's resource, and returns the index after it.
func maskEntries(out, b []byte, i int, fields []string, repl []byte, n *int) ([]byte, int, error) {
	out = append(out, '[')
	i = skipWS(b, i+1)
	first := true
	for i < len(b) && b[i] != ']' {
		out = appendSep(out, &first)
		if b[i] != '{' {
			end := skipValue(b, i)
			if end < 0 {
				return nil, 0, errInvalid
			}
			out = append(out, b[i:end]...)
			i = end
		} else {
			out = append(out, '{')
			firstMember := true
			i = skipWS(b, i+1)
			for i < len(b) && b[i] != '}' {
				kstart := i
				kend := skipString(b, i)
				if kend < 0 {
					return nil, 0, errInvalid
				}
				i = skipWS(b, kend)
				if i >= len(b) || b[i] != ':' {
					return nil, 0, errInvalid
				}
				v := skipWS(b, i+1)
				out = appendSep(out, &firstMember)
				var end int
				if string(b[kstart+1:kend-1]) == "resource" && v < len(b) && b[v] == '{' {
					out = append(out, b[kstart:v]...)
					var err error
					if out, end, err = mask(out, b, v, fields, repl, n); err != nil {
						return nil, 0, err
					}
				} else {
					if end = skipValue(b, v); end < 0 {
						return nil, 0, errInvalid
					}
					out = append(out, b[kstart:end]...)
				}
				i = skipWS(b, end)
				if i < len(b) && b[i] == ',' {
					i = skipWS(b, i+1)
				}
			}
			if i >= len(b) {
				return nil, 0, errInvalid
			}
			out = append(out, '}')
			i++
		}
		i = skipWS(b, i)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
		}
	}
	if i >= len(b) {
		return nil, 0, errInvalid
	}
	return append(out, ']'), i + 1, nil
}

// Extract returns a JSON array with one object per resource: the body's
// resource, or every entry.resource of a Bundle (nested Bundles
// flattened). Each object has the resource's resourceType and id and the
// top-level elements named in fields that it has.
func Extract(body []byte, fields []string) ([]byte, error) {
	if !valid(body) {
		return nil, errInvalid
	}
	out := []byte{'['}
	first := true
	if err := extract(body, fields, &out, &first); err != nil {
		return nil, err
	}
	return append(out, ']'), nil
}

func extract(obj []byte, fields []string, out *[]byte, first *bool) error {
	if isBundle(obj) {
		return members(obj, func(m member) error {
			if string(m.key) != "entry" {
				return nil
			}
			return elements(m.val, func(entry []byte) error {
				return members(entry, func(em member) error {
					if string(em.key) == "resource" && len(em.val) > 0 && em.val[0] == '{' {
						return extract(em.val, fields, out, first)
					}
					return nil
				})
			})
		})
	}
	if !*first {
		*out = append(*out, ',')
	}
	*first = false
	*out = append(*out, '{')
	firstMember := true
	err := members(obj, func(m member) error {
		if string(m.key) == "resourceType" || string(m.key) == "id" || hasKey(fields, m.key) {
			if !firstMember {
				*out = append(*out, ',')
			}
			firstMember = false
			*out = append(*out, obj[m.start:m.end]...)
		}
		return nil
	})
	*out = append(*out, '}')
	return err
}
