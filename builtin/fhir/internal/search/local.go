package search

import (
	"strings"

	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// addLocal adds, for each absolute reference value under one of bases
// (this server's own base URLs), the relative reference it names, so that
// "https://fhir.example.org/fhir/R4/Patient/85" also finds what refers to
// Patient/85. The absolute value stays: it finds what was stored under
// that URL. A URL whose rest is not [type]/[id] (or whose type the
// clause's :[type] modifier excludes) adds nothing.
func (c *Clause) addLocal(bases []string) {
	n := len(c.Values)
	for i := 0; i < n; i++ {
		v := c.Values[i]
		if v.URL == "" {
			continue
		}
		for _, b := range bases {
			rest, ok := strings.CutPrefix(v.URL, strings.TrimSuffix(b, "/")+"/")
			if !ok || b == "" {
				continue
			}
			if j := strings.Index(rest, "/_history/"); j >= 0 {
				rest = rest[:j]
			}
			typ, id, ok := strings.Cut(rest, "/")
			if !ok || !ValidID(id) || !spec.IsResourceType(typ) || c.Modifier != "" && c.Modifier != typ {
				break
			}
			c.Values = append(c.Values, Value{Raw: v.Raw, RefType: typ, RefID: id})
			break
		}
	}
}
