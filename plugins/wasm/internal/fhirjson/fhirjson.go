// Package fhirjson rewrites and extracts top-level elements of FHIR JSON
// resources, and of every resource of a Bundle, for the wasm host
// functions json_mask and json_extract. It keeps the order of the elements
// it does not touch.
package fhirjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
)

var errNotObject = errors.New("not a JSON object")

// visit decodes the object in data and calls f for each member in order.
func visit(data []byte, f func(key string, val json.RawMessage) error) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errNotObject
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return err
		}
		if err := f(key, val); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the object")
	}
	return nil
}

func appendMember(b []byte, first bool, key string, val []byte) []byte {
	if !first {
		b = append(b, ',')
	}
	k, _ := json.Marshal(key)
	b = append(b, k...)
	b = append(b, ':')
	return append(b, val...)
}

// Mask returns a copy of the resource in body with the top-level elements
// named in fields replaced by repl (a JSON value), or removed when repl is
// empty, and how many it replaced. In a Bundle, it masks every
// entry.resource (and nested Bundles) instead of the Bundle itself.
func Mask(body []byte, fields []string, repl []byte) ([]byte, int, error) {
	if len(repl) > 0 && !json.Valid(repl) {
		return nil, 0, errors.New("replacement is not JSON")
	}
	n := 0
	out, err := mask(body, fields, repl, &n)
	return out, n, err
}

func mask(body []byte, fields []string, repl []byte, n *int) ([]byte, error) {
	bundle := isBundle(body)
	out := make([]byte, 0, len(body))
	out = append(out, '{')
	first := true
	err := visit(body, func(key string, val json.RawMessage) error {
		switch {
		case bundle && key == "entry":
			v, err := maskEntries(val, fields, repl, n)
			if err != nil {
				return err
			}
			val = v
		case !bundle && slices.Contains(fields, key):
			*n++
			if len(repl) == 0 {
				return nil
			}
			val = repl
		}
		out = appendMember(out, first, key, val)
		first = false
		return nil
	})
	if err != nil {
		return nil, err
	}
	return append(out, '}'), nil
}

func maskEntries(val json.RawMessage, fields []string, repl []byte, n *int) (json.RawMessage, error) {
	var entries []json.RawMessage
	if err := json.Unmarshal(val, &entries); err != nil {
		return nil, err
	}
	out := []byte{'['}
	for i, e := range entries {
		if i > 0 {
			out = append(out, ',')
		}
		ne := []byte{'{'}
		first := true
		err := visit(e, func(key string, v json.RawMessage) error {
			if key == "resource" {
				m, err := mask(v, fields, repl, n)
				if err != nil {
					return err
				}
				v = m
			}
			ne = appendMember(ne, first, key, v)
			first = false
			return nil
		})
		if err != nil {
			return nil, err
		}
		out = append(append(out, ne...), '}')
	}
	return append(out, ']'), nil
}

// isBundle reports whether the object's resourceType is Bundle, looking no
// deeper than its top level.
func isBundle(body []byte) bool {
	var head struct {
		ResourceType string `json:"resourceType"`
	}
	// A cheap check first: most bodies say so near the start.
	if !bytes.Contains(body, []byte(`"Bundle"`)) {
		return false
	}
	if err := json.Unmarshal(body, &head); err != nil {
		return false
	}
	return head.ResourceType == "Bundle"
}

// Extract returns a JSON array with one object per resource: the body's
// resource, or every entry.resource of a Bundle (nested Bundles
// flattened). Each object has the resource's resourceType and id and the
// top-level elements named in fields that it has.
func Extract(body []byte, fields []string) ([]byte, error) {
	out := []byte{'['}
	first := true
	if err := extract(body, fields, &out, &first); err != nil {
		return nil, err
	}
	return append(out, ']'), nil
}

func extract(body []byte, fields []string, out *[]byte, first *bool) error {
	if isBundle(body) {
		return visit(body, func(key string, val json.RawMessage) error {
			if key != "entry" {
				return nil
			}
			var entries []struct {
				Resource json.RawMessage `json:"resource"`
			}
			if err := json.Unmarshal(val, &entries); err != nil {
				return err
			}
			for _, e := range entries {
				if len(e.Resource) > 0 {
					if err := extract(e.Resource, fields, out, first); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	obj := []byte{'{'}
	firstMember := true
	err := visit(body, func(key string, val json.RawMessage) error {
		if key == "resourceType" || key == "id" || slices.Contains(fields, key) {
			obj = appendMember(obj, firstMember, key, val)
			firstMember = false
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !*first {
		*out = append(*out, ',')
	}
	*first = false
	*out = append(append(*out, obj...), '}')
	return nil
}
