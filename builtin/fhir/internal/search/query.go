package search

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// Query is a parsed search of one resource type.
type Query struct {
	// Type is the resource type searched.
	Type string
	// Compartment, when set, restricts the search to the Patient
	// compartment of that patient id (GET Patient/85/Observation).
	Compartment string
	// Clauses are ANDed; the values of one clause are ORed.
	Clauses []Clause
	// Alternatives, when not empty, further confine the search to the
	// resources that match every clause of at least one group: an OR of
	// AND-groups, which is how access constraints (SMART v2 scope
	// constraints such as category=laboratory, one group per scope) reach
	// the store. They are not request parameters: Self does not show them.
	// Nil: no constraint.
	Alternatives [][]Clause
	// Sort keys, in order. Empty: most recently updated first.
	Sort []SortKey
	// Count is the page size; Offset the position of the page.
	Count, Offset int
	// Includes are the _include and _revinclude requests.
	Includes []Include
	// Summary is "", "true", "text", "data", "count" or "false".
	Summary string
	// Elements lists the top-level elements asked for by _elements.
	Elements []string
	// Total is "", "none", "estimate" or "accurate".
	Total string
	// Page names a stored result snapshot that paging links carry.
	Page string
	// Self holds the parameters the server used, for the self link
	// (without _count, _offset and _page).
	Self url.Values
	// Unknown lists the parameters that were ignored (with Lenient).
	Unknown []string
	// Now is the instant the search runs at: the "ap" prefix on dates
	// widens a range by 10% of its distance from Now (see ApproxRange).
	Now time.Time
}

// Clause is one search parameter with its modifier and values.
type Clause struct {
	// Param is the parameter, nil for _id and _lastUpdated (Name says
	// which), which stores keep as columns.
	Param *Param
	// Name is the parameter code.
	Name string
	// Type is the parameter type (token for _id, date for _lastUpdated).
	Type string
	// Modifier is "", "missing", "exact", "contains", "text", "not",
	// "below", "above", "of-type", or a resource type for references.
	Modifier string
	// Chain is the inner search of a chained or _has clause (Type
	// TypeChain), which has no Values of its own.
	Chain *Chain
	// Values are ORed.
	Values []Value
}

// Value is one parsed search value; which fields are set depends on the
// clause's type.
type Value struct {
	// Raw is the value as given.
	Raw string
	// Prefix is eq, ne, gt, lt, ge, le, sa, eb or ap (date, number, quantity).
	Prefix string
	// Str is the normalized string (string parameters, :text).
	Str string
	// System and Code of a token; AnySystem when no "|" was given.
	System, Code string
	AnySystem    bool
	// Lo and Hi bound a date range [Lo, Hi) in milliseconds.
	Lo, Hi int64
	// Num and Half: a number or quantity value and half its precision.
	Num, Half float64
	// RefType, RefID and URL of a reference value.
	RefType, RefID, URL string
	// Missing is the value of :missing.
	Missing bool
	// Parts are the values of the components of a composite value, in
	// the order of the parameter's components.
	Parts []Value
}

// SortKey is one _sort key.
type SortKey struct {
	// Param is nil for _id and _lastUpdated.
	Param *Param
	Name  string
	Desc  bool
}

// Include is one _include (Rev false) or _revinclude (Rev true).
type Include struct {
	Rev     bool
	Iterate bool
	// Source is the type holding the reference; Param its parameter,
	// nil for "*" (every reference parameter of Source).
	Source string
	Param  *Param
	// Target restricts the referenced type ("" for any).
	Target string
}

// Options bound what Parse accepts.
type Options struct {
	// DefaultCount is the page size without _count. Default 20.
	DefaultCount int
	// MaxCount caps _count. Default 1000.
	MaxCount int
	// Lenient ignores the parameters the searched type does not define
	// (Prefer: handling=lenient), listing them in Query.Unknown. Default:
	// they are an *Error, so that a search is never silently widened.
	Lenient bool
	// Now is the instant the search runs at, copied to Query.Now.
	// Default: the time Parse is called.
	Now time.Time
	// LocalBases are the absolute base URLs of this server
	// ("https://fhir.example.org/fhir/R4"): a reference value under one of
	// them ("https://fhir.example.org/fhir/R4/Patient/85") also matches the
	// relative reference it names (Patient/85), besides what was stored
	// under that URL. Default none: an absolute URL matches only what was
	// stored under it.
	LocalBases []string
}

// Error is a query that cannot be run; Problems lists each bad parameter.
type Error struct {
	Problems []Problem
}

// Problem is one bad parameter.
type Problem struct {
	Param   string
	Message string
}

func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s: %s", p.Param, p.Message)
	}
	return "invalid search: " + b.String()
}

// prefixes of ordered types.
var prefixes = []string{"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"}

// modifiers allowed per parameter type.
var modifiers = map[string][]string{
	TypeString:    {"missing", "exact", "contains"},
	TypeToken:     {"missing", "text", "not", "of-type"},
	TypeReference: {"missing"},
	TypeDate:      {"missing"},
	TypeNumber:    {"missing"},
	TypeQuantity:  {"missing"},
	TypeURI:       {"missing", "below", "above"},
}

// result parameters that are accepted and have no effect on matching.
var ignored = map[string]bool{"_format": true, "_pretty": true}

// Parse parses the query parameters of a search of typ. It returns an
// *Error listing every bad parameter (bad values, unknown modifiers,
// chains the parameter's types cannot follow, and, unless Lenient, unknown
// parameters). Besides the parameters of typ it accepts chains
// (subject:Patient.name), reverse chains (_has:Observation:patient:code)
// and composite parameters (code-value-quantity=…$…).
func Parse(typ string, params url.Values, opt Options) (*Query, error) {
	if opt.DefaultCount <= 0 {
		opt.DefaultCount = 20
	}
	if opt.MaxCount <= 0 {
		opt.MaxCount = 1000
	}
	if opt.Now.IsZero() {
		opt.Now = time.Now()
	}
	q := &Query{Type: typ, Count: opt.DefaultCount, Self: url.Values{}, Now: opt.Now}
	errs := &Error{}
	bad := func(name, format string, args ...any) {
		errs.Problems = append(errs.Problems, Problem{name, fmt.Sprintf(format, args...)})
	}
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		vals := params[name]
		switch {
		case ignored[name]:
			continue
		case name == "_count":
			n, err := strconv.Atoi(last(vals))
			if err != nil || n < 0 {
				bad(name, "must be a non-negative integer")
				continue
			}
			q.Count = min(n, opt.MaxCount)
			continue
		case name == "_offset":
			n, err := strconv.Atoi(last(vals))
			if err != nil || n < 0 {
				bad(name, "must be a non-negative integer")
				continue
			}
			q.Offset = n
			continue
		case name == "_page":
			q.Page = last(vals)
			continue
		case name == "_sort":
			q.parseSort(vals, bad)
		case name == "_summary":
			v := last(vals)
			if !slices.Contains([]string{"true", "text", "data", "count", "false"}, v) {
				bad(name, "must be true, text, data, count or false")
				continue
			}
			q.Summary = v
		case name == "_elements":
			for _, v := range vals {
				for _, e := range strings.Split(v, ",") {
					if e = strings.TrimSpace(e); e != "" {
						q.Elements = append(q.Elements, e)
					}
				}
			}
		case name == "_total":
			v := last(vals)
			if !slices.Contains([]string{"none", "estimate", "accurate"}, v) {
				bad(name, "must be none, estimate or accurate")
				continue
			}
			q.Total = v
		case name == "_include" || name == "_revinclude" || name == "_include:iterate" || name == "_revinclude:iterate":
			q.parseIncludes(name, vals, bad)
		default:
			if _, err := parseClause(typ, name, 0); err != nil {
				var u *unknownParam
				if errors.As(err, &u) && opt.Lenient {
					q.Unknown = append(q.Unknown, name)
				} else {
					bad(name, "%v", err)
				}
				continue
			}
			ok := true
			for _, v := range vals {
				// A new clause per value: a chain's inner queries are
				// its own.
				cl, _ := parseClause(typ, name, 0)
				if err := cl.fill(v, &opt); err != nil {
					bad(name, "%v", err)
					ok = false
					continue
				}
				q.Clauses = append(q.Clauses, cl)
			}
			if !ok {
				continue
			}
		}
		q.Self[name] = vals
	}
	if len(errs.Problems) > 0 {
		return nil, errs
	}
	return q, nil
}

// ParseConstraint parses the search parameters of an access constraint on
// resource type typ (the query of a SMART v2 scope,
// "category=laboratory"): the clauses a resource must match. It is strict:
// an unknown parameter, a result parameter (_count, _include, _sort, …) or a
// bad value is an *Error, so that a constraint the server cannot evaluate
// never widens access.
func ParseConstraint(typ string, params url.Values, now time.Time) ([]Clause, error) {
	errs := &Error{}
	for name := range params {
		code, _, _ := strings.Cut(name, ":")
		if _, ok := clauseFor(typ, code); !ok || ignored[name] {
			errs.Problems = append(errs.Problems, Problem{name, "not a search parameter of " + typ + " a constraint can use"})
		}
	}
	if len(errs.Problems) > 0 {
		sort.Slice(errs.Problems, func(i, j int) bool { return errs.Problems[i].Param < errs.Problems[j].Param })
		return nil, errs
	}
	q, err := Parse(typ, params, Options{Now: now})
	if err != nil {
		return nil, err
	}
	return q.Clauses, nil
}

func last(vals []string) string {
	if len(vals) == 0 {
		return ""
	}
	return vals[len(vals)-1]
}

func isTarget(p *Param, typ string) bool {
	return spec.IsResourceType(typ) && (len(p.Target) == 0 || slices.Contains(p.Target, typ))
}

// clauseFor returns an empty clause for parameter code of typ.
func clauseFor(typ, code string) (Clause, bool) {
	switch code {
	case "_id":
		return Clause{Name: code, Type: TypeToken}, true
	case "_lastUpdated":
		return Clause{Name: code, Type: TypeDate}, true
	}
	p, ok := Lookup(typ, code)
	if !ok {
		return Clause{}, false
	}
	return Clause{Param: p, Name: code, Type: p.Type}, true
}

// splitValues splits a comma-separated list, honouring "\," escapes.
func splitValues(s string) []string {
	var out []string
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) && (s[i+1] == ',' || s[i+1] == '\\' || s[i+1] == '$' || s[i+1] == '|') {
			if s[i+1] == '|' || s[i+1] == '$' { // keep the escape for token and composite splitting
				b.WriteByte('\\')
			}
			b.WriteByte(s[i+1])
			i++
			continue
		}
		if c == ',' {
			out = append(out, b.String())
			b.Reset()
			continue
		}
		b.WriteByte(c)
	}
	return append(out, b.String())
}

// splitBar splits a token or quantity value at unescaped "|".
func splitBar(s string) []string { return splitAt(s, '|') }

// splitAt splits s at its unescaped sep ("|" of a token, "$" of a
// composite) and removes the escapes of sep.
func splitAt(s string, sep byte) []string {
	var out []string
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && s[i+1] == sep {
			b.WriteByte(sep)
			i++
			continue
		}
		if s[i] == sep {
			out = append(out, b.String())
			b.Reset()
			continue
		}
		b.WriteByte(s[i])
	}
	return append(out, b.String())
}

func (c *Clause) parseValues(raw string) error {
	c.Values = nil
	if c.Modifier == "missing" {
		switch raw {
		case "true", "false":
			c.Values = []Value{{Raw: raw, Missing: raw == "true"}}
			return nil
		}
		return fmt.Errorf(":missing takes true or false, not %q", raw)
	}
	for _, s := range splitValues(raw) {
		if s == "" {
			continue
		}
		v, err := c.parseValue(s)
		if err != nil {
			return err
		}
		c.Values = append(c.Values, v)
	}
	if len(c.Values) == 0 {
		return fmt.Errorf("empty value")
	}
	return nil
}

func splitPrefix(s string) (prefix, rest string) {
	if len(s) > 2 && slices.Contains(prefixes, s[:2]) {
		return s[:2], s[2:]
	}
	return "eq", s
}

func (c *Clause) parseValue(s string) (Value, error) {
	if c.Type == TypeComposite {
		return parseComposite(c.Param, s)
	}
	s = strings.ReplaceAll(s, `\$`, "$")
	v := Value{Raw: s}
	switch c.Type {
	case TypeString:
		v.Str = Normalize(s)
		if c.Modifier == "exact" {
			v.Str = s
		}
	case TypeToken:
		if c.Modifier == "text" {
			v.Str = Normalize(strings.ReplaceAll(s, `\|`, "|"))
			break
		}
		if c.Modifier == "of-type" {
			parts := splitBar(s)
			if len(parts) != 3 || parts[1] == "" || parts[2] == "" {
				return v, fmt.Errorf(":of-type takes [system]|code|value (the identifier's type and its value), not %q", s)
			}
			// Indexed as type code|value under the type's system (see
			// Entries.addOfType); no system: any.
			v.System, v.Code, v.AnySystem = parts[0], parts[1]+"|"+parts[2], parts[0] == ""
			break
		}
		parts := splitBar(s)
		switch len(parts) {
		case 1:
			v.Code, v.AnySystem = parts[0], true
		case 2:
			v.System, v.Code = parts[0], parts[1]
		default:
			return v, fmt.Errorf("token %q has more than one '|'", s)
		}
		if c.Name == "_id" {
			if v.Code == "" || !v.AnySystem {
				return v, fmt.Errorf("_id takes ids, not %q", s)
			}
		}
	case TypeDate:
		p, rest := splitPrefix(s)
		rest = strings.ReplaceAll(rest, " ", "+") // an unencoded '+' of a time zone
		lo, hi, err := ParseDate(rest)
		if err != nil {
			return v, fmt.Errorf("%q: %w", s, err)
		}
		v.Prefix, v.Lo, v.Hi = p, lo, hi
	case TypeNumber:
		p, rest := splitPrefix(s)
		n, half, err := numberRange(rest)
		if err != nil {
			return v, err
		}
		v.Prefix, v.Num, v.Half = p, n, half
	case TypeQuantity:
		parts := splitBar(s)
		if len(parts) != 1 && len(parts) != 3 {
			return v, fmt.Errorf("quantity %q: want [prefix]number[|system|code]", s)
		}
		p, rest := splitPrefix(parts[0])
		n, half, err := numberRange(rest)
		if err != nil {
			return v, err
		}
		v.Prefix, v.Num, v.Half = p, n, half
		if len(parts) == 3 {
			v.System, v.Code = parts[1], parts[2]
		}
	case TypeReference:
		typ, id := "", s
		if strings.Contains(s, "://") || strings.HasPrefix(s, "urn:") {
			v.URL = s
			break
		}
		if i := strings.Index(s, "/_history/"); i >= 0 {
			id = s[:i]
		}
		if i := strings.LastIndexByte(id, '/'); i >= 0 {
			typ, id = id[:i], id[i+1:]
			if !spec.IsResourceType(typ) {
				return v, fmt.Errorf("reference %q: unknown resource type %q", s, typ)
			}
		}
		if c.Modifier != "" {
			if typ != "" && typ != c.Modifier {
				return v, fmt.Errorf("reference %q does not match :%s", s, c.Modifier)
			}
			typ = c.Modifier
		}
		if !ValidID(id) {
			return v, fmt.Errorf("reference %q: invalid id", s)
		}
		v.RefType, v.RefID = typ, id
	case TypeURI:
		v.Str = s
	}
	return v, nil
}

// ValidID reports whether s is a FHIR id: 1 to 64 of [A-Za-z0-9-.].
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func (q *Query) parseSort(vals []string, bad func(string, string, ...any)) {
	for _, v := range vals {
		for _, k := range strings.Split(v, ",") {
			k = strings.TrimSpace(k)
			desc := strings.HasPrefix(k, "-")
			k = strings.TrimPrefix(k, "-")
			if k == "" {
				continue
			}
			if k == "_id" || k == "_lastUpdated" {
				q.Sort = append(q.Sort, SortKey{Name: k, Desc: desc})
				continue
			}
			p, ok := Lookup(q.Type, k)
			if !ok {
				bad("_sort", "unknown search parameter %q for %s", k, q.Type)
				continue
			}
			if p.Type == TypeReference || p.Type == TypeComposite {
				bad("_sort", "cannot sort on %s parameter %q", p.Type, k)
				continue
			}
			q.Sort = append(q.Sort, SortKey{Param: p, Name: k, Desc: desc})
		}
	}
}

func (q *Query) parseIncludes(name string, vals []string, bad func(string, string, ...any)) {
	rev := strings.HasPrefix(name, "_revinclude")
	iterate := strings.HasSuffix(name, ":iterate")
	for _, v := range vals {
		if v == "*" && !rev {
			q.Includes = append(q.Includes, Include{Source: q.Type, Iterate: iterate})
			continue
		}
		parts := strings.Split(v, ":")
		if len(parts) < 2 || len(parts) > 3 || !spec.IsResourceType(parts[0]) {
			bad(name, "%q: want SourceType:parameter[:TargetType]", v)
			continue
		}
		// An _include whose source is not the searched type finds nothing.
		inc := Include{Rev: rev, Iterate: iterate, Source: parts[0]}
		if parts[1] != "*" {
			p, ok := Lookup(parts[0], parts[1])
			if !ok || p.Type != TypeReference {
				bad(name, "%q: %s has no reference parameter %q", v, parts[0], parts[1])
				continue
			}
			inc.Param = p
		}
		if len(parts) == 3 {
			if !spec.IsResourceType(parts[2]) {
				bad(name, "%q: unknown target type", v)
				continue
			}
			inc.Target = parts[2]
		}
		q.Includes = append(q.Includes, inc)
	}
}

// Ranges used by stores for prefix comparisons.

// ApproxRange widens [lo, hi) by 10% of its distance from now (at least a
// day), the server's reading of the "ap" prefix on dates.
func ApproxRange(lo, hi int64, now time.Time) (int64, int64) {
	n := now.UnixMilli()
	gap := max(abs(n-lo), abs(hi-n)) / 10
	gap = max(gap, int64(24*time.Hour/time.Millisecond))
	return lo - gap, hi + gap
}

// ApproxNumber widens a number by 10% of its value (and its precision).
func ApproxNumber(v, half float64) (lo, hi float64) {
	w := math.Max(math.Abs(v)*0.1, half)
	return v - w, v + w
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}
