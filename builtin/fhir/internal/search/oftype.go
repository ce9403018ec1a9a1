package search

import "sync"

// OfTypeSuffix ends the key under which identifier parameters index their
// values by identifier type, for the :of-type modifier: the rows of
// "Patient.identifier:of-type" hold, for each Identifier with a
// type.coding, the coding's system and "code|value".
const OfTypeSuffix = ":of-type"

// IsIdentifier reports whether p is a token parameter on Identifier
// elements (Patient.identifier, DocumentReference.masterIdentifier), the
// parameters :of-type applies to.
func IsIdentifier(p *Param) bool { return p != nil && p.ident }

var ofTypeParams sync.Map // *Param to its :of-type *Param

// ofTypeParam returns the parameter whose key names p's :of-type rows; the
// store searches it as any token parameter.
func ofTypeParam(p *Param) *Param {
	if v, ok := ofTypeParams.Load(p); ok {
		return v.(*Param)
	}
	cp := *p
	cp.key = p.key + OfTypeSuffix
	v, _ := ofTypeParams.LoadOrStore(p, &cp)
	return v.(*Param)
}

// addOfType indexes an Identifier by its type: one row per type.coding
// with a code, under the coding's system, with code "code|value".
func (e *Entries) addOfType(key string, v any) {
	m, ok := v.(map[string]any)
	if !ok {
		return
	}
	val := str(m, "value")
	t, _ := m["type"].(map[string]any)
	if val == "" || t == nil {
		return
	}
	codings, _ := t["coding"].([]any)
	for _, c := range codings {
		cm, ok := c.(map[string]any)
		if !ok {
			continue
		}
		if code := str(cm, "code"); code != "" {
			e.Tokens = append(e.Tokens, TokenEntry{Param: key, System: str(cm, "system"), Code: truncate(code + "|" + val)})
		}
	}
}
