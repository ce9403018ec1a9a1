package postgres

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// The search SQL is the SQLite store's (store/sqlite/query.go), written for
// PostgreSQL: $n parameters, arrays for lists, booleans. Its meaning is the
// same, and the conformance suite (store/storetest) holds the two stores
// to it.

// sqlBuilder accumulates a WHERE clause over "resources r" and its
// arguments.
type sqlBuilder struct {
	where strings.Builder
	args  []any
	order []string
	now   time.Time // the query's instant, for "ap" on dates
	// r is the alias of the resources the conditions being written are
	// about ("r" for the search, r1, r2, … for the inner searches of
	// chains), depth the nesting of chains.
	r     string
	depth int
}

// arg adds an argument and returns its placeholder.
func (b *sqlBuilder) arg(v any) string {
	b.args = append(b.args, v)
	return "$" + strconv.Itoa(len(b.args))
}

func (b *sqlBuilder) w(s ...string) {
	for _, x := range s {
		b.where.WriteString(x)
	}
}

// maxRune is appended to a prefix to bound a range of strings starting
// with it.
const maxRune = "\U0010FFFF"

// maxKey bounds the text values of index columns in bytes (see key):
// PostgreSQL refuses btree entries over about 2700 bytes, and an index
// holds up to two such values.
const maxKey = 1000

// text makes s storable in a text column: PostgreSQL's text holds neither
// NUL nor invalid UTF-8, which become U+FFFD (invalid UTF-8 can only come
// from a search value; stored values are decoded JSON).
func text(s string) string {
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	}
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return s
}

// key is text cut to maxKey bytes (at a character boundary): the form in
// which codes, systems, references, uris and compartments are indexed, and
// searched for. Values longer than that compare on their first maxKey
// bytes. String values are cut to 512 bytes by the indexer already.
func key(s string) string {
	s = text(s)
	if len(s) <= maxKey {
		return s
	}
	i := maxKey
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}

func keys(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = key(s)
	}
	return out
}

var tables = map[string]string{
	search.TypeString: "sp_string", search.TypeToken: "sp_token", search.TypeReference: "sp_ref",
	search.TypeDate: "sp_date", search.TypeNumber: "sp_number", search.TypeQuantity: "sp_quantity",
	search.TypeURI: "sp_uri",
}

func buildSearch(q *search.Query) *sqlBuilder {
	b := &sqlBuilder{now: q.Now, r: "r"}
	b.conditions(q)
	for _, k := range q.Sort {
		b.sortKey(k)
	}
	return b
}

// conditions writes the conditions that the resource b.r matches q by:
// its type, not deleted, in q's compartment, every clause, one of the
// alternatives.
func (b *sqlBuilder) conditions(q *search.Query) {
	byID := idDriven(q.Clauses)
	driver := -1
	if !byID && q.Compartment == "" {
		driver = pickDriver(q.Clauses)
	}
	// PostgreSQL's planner picks the index that finds the candidates from
	// its statistics; SQLite's "+r.type" hint has no equivalent here.
	b.w(b.r, `.type = `, b.arg(text(q.Type)), ` AND NOT `, b.r, `.deleted`)
	if q.Compartment != "" {
		b.compartment(q.Type, q.Compartment, !byID)
	}
	for i := range q.Clauses {
		b.w(" AND ")
		b.clause(q.Type, &q.Clauses[i], i == driver)
	}
	if len(q.Alternatives) > 0 {
		b.alternatives(q.Type, q.Alternatives)
	}
}

// chain adds a chained or _has clause of a search of typ, as subqueries
// over the reference index and the inner searches (see the SQLite
// store's chain).
func (b *sqlBuilder) chain(typ string, ch *search.Chain) {
	r, t := b.r, "t"+strconv.Itoa(b.depth)
	b.depth++
	inner := "r" + strconv.Itoa(b.depth)
	defer func() { b.r = r; b.depth-- }()
	if ch.Rev {
		b.w(r, `.rid IN (SELECT x.rid FROM resources x WHERE x.type = `, b.arg(text(typ)), ` AND x.id IN (SELECT `, t, `.tid FROM sp_ref `, t,
			` WHERE `, t, `.p = `, b.arg(text(ch.Param.Key())), ` AND `, t, `.ttype = `, b.arg(key(typ)), ` AND `, t,
			`.rid IN (SELECT `, inner, `.rid FROM resources `, inner, ` WHERE `)
		b.r = inner
		b.conditions(ch.Queries[0])
		b.w(`)))`)
		return
	}
	b.w("(")
	for i, in := range ch.Queries {
		if i > 0 {
			b.w(" OR ")
		}
		b.w(r, `.rid IN (SELECT `, t, `.rid FROM sp_ref `, t, ` WHERE `, t, `.p = `, b.arg(text(ch.Param.Key())), ` AND `, t, `.ttype = `,
			b.arg(key(in.Type)), ` AND `, t, `.tid IN (SELECT `, inner, `.id FROM resources `, inner, ` WHERE `)
		b.r = inner
		b.conditions(in)
		b.r = r
		b.w(`))`)
	}
	b.w(")")
}

// composite adds a composite clause (see the SQLite store's composite and
// search.CompositeKey).
func (b *sqlBuilder) composite(c *search.Clause, driver bool) {
	comps := c.Param.Components()
	if len(comps) == 2 {
		part := &search.Clause{Type: comps[1].Type}
		table := tables[comps[1].Type]
		if driver {
			b.w(b.r, `.rid IN (SELECT rid FROM `, table, ` WHERE (`)
		} else {
			b.w(`EXISTS (SELECT 1 FROM `, table, ` WHERE rid = `, b.r, `.rid AND (`)
		}
		for i, v := range c.Values {
			if i > 0 {
				b.w(" OR ")
			}
			b.w(`(p = `, b.arg(text(search.CompositeKey(c.Param, v, 1))), ` AND `)
			b.value(part, v.Parts[1])
			b.w(")")
		}
		b.w("))")
		return
	}
	// More components: the rows of component 1 of one instance, then
	// those of the others of the same instance.
	if driver {
		b.w(b.r, `.rid IN (SELECT a.rid FROM `, tables[comps[1].Type], ` a WHERE (`)
	} else {
		b.w(`EXISTS (SELECT 1 FROM `, tables[comps[1].Type], ` a WHERE a.rid = `, b.r, `.rid AND (`)
	}
	for i, v := range c.Values {
		if i > 0 {
			b.w(" OR ")
		}
		first := text(search.CompositeKey(c.Param, v, 1))
		b.w(`(a.p >= `, b.arg(first), ` AND a.p < `, b.arg(first+maxRune), ` AND `)
		b.value(&search.Clause{Type: comps[1].Type}, v.Parts[1])
		for j := 2; j < len(comps); j++ {
			// The instance number follows the prefix of component 1.
			b.w(` AND EXISTS (SELECT 1 FROM `, tables[comps[j].Type], ` WHERE rid = a.rid AND p = `,
				b.arg(text(search.CompositeKey(c.Param, v, j))), `::text || substr(a.p, `, b.arg(utf8.RuneCountInString(first)+1), `) AND `)
			b.value(&search.Clause{Type: comps[j].Type}, v.Parts[j])
			b.w(")")
		}
		b.w(")")
	}
	b.w("))")
}

// idDriven reports whether an _id clause names the candidates.
func idDriven(cs []search.Clause) bool {
	for _, c := range cs {
		if c.Name == "_id" && c.Modifier == "" {
			return true
		}
	}
	return false
}

// compartment confines the search to the Patient compartment of patient:
// through the references that make the searched type's resources members
// when it drives the search, else by checking each candidate against the
// compartment table (see the SQLite store's compartment).
func (b *sqlBuilder) compartment(typ, patient string, drive bool) {
	params := spec.PatientCompartment[typ]
	switch {
	case !drive:
		b.w(` AND EXISTS (SELECT 1 FROM compartment WHERE rid = `, b.r, `.rid AND patient = `, b.arg(key(patient)), `)`)
	case typ == "Patient":
		b.w(` AND `, b.r, `.rid IN (SELECT rid FROM resources WHERE type = 'Patient' AND id = `, b.arg(text(patient)))
		if len(params) > 0 {
			b.w(` UNION ALL `)
			b.refCandidates(typ, params, patient)
		}
		b.w(`)`)
	case len(params) > 0:
		b.w(` AND `, b.r, `.rid IN (`)
		b.refCandidates(typ, params, patient)
		b.w(`)`)
	default:
		// Not a compartment type: the table holds none of its resources.
		b.w(` AND `, b.r, `.rid IN (SELECT rid FROM compartment WHERE patient = `, b.arg(key(patient)), `)`)
	}
}

func (b *sqlBuilder) refCandidates(typ string, params []string, patient string) {
	ps := make([]string, len(params))
	for i, p := range params {
		ps[i] = typ + "." + p
	}
	b.w(`SELECT rid FROM sp_ref WHERE p = ANY(`, b.arg(ps), `) AND tid = `, b.arg(key(patient)), ` AND ttype = 'Patient'`)
}

// alternatives adds the OR of the AND-groups of q.Alternatives; each
// clause is a check of the candidates.
func (b *sqlBuilder) alternatives(typ string, groups [][]search.Clause) {
	b.w(" AND (")
	for i, g := range groups {
		if i > 0 {
			b.w(" OR ")
		}
		b.w("(")
		if len(g) == 0 {
			b.w("TRUE")
		}
		for j := range g {
			if j > 0 {
				b.w(" AND ")
			}
			b.clause(typ, &g[j], false)
		}
		b.w(")")
	}
	b.w(")")
}

// driverRank orders parameter types by how few rows a value usually
// matches: the best clause is written as the set of candidates, the others
// as checks of each candidate.
var driverRank = map[string]int{
	search.TypeReference: 1, search.TypeToken: 2, search.TypeString: 3, search.TypeURI: 4,
	search.TypeDate: 5, search.TypeQuantity: 6, search.TypeNumber: 7,
	search.TypeChain: 2, search.TypeComposite: 2,
}

// pickDriver returns the index of the clause to drive the search, -1 for
// none.
func pickDriver(cs []search.Clause) int {
	best, rank := -1, 100
	for i, c := range cs {
		if c.Param == nil || c.Modifier == "not" || c.Modifier == "missing" {
			continue
		}
		if r := driverRank[c.Type]; r < rank {
			best, rank = i, r
		}
	}
	return best
}

func (b *sqlBuilder) orderBy() string {
	keys := append(b.order, "r.rid")
	return " ORDER BY " + strings.Join(keys, ", ")
}

// clause adds one parameter's condition.
func (b *sqlBuilder) clause(typ string, c *search.Clause, driver bool) {
	r := b.r
	switch {
	case c.Chain != nil:
		b.chain(typ, c.Chain)
		return
	case c.Type == search.TypeComposite:
		b.composite(c, driver)
		return
	}
	switch c.Name {
	case "_id":
		if c.Modifier == "missing" {
			b.w(boolSQL(!c.Values[0].Missing))
			return
		}
		ids := make([]string, len(c.Values))
		for i, v := range c.Values {
			ids[i] = text(v.Code)
		}
		if c.Modifier == "not" {
			b.w(`NOT (`, r, `.id = ANY(`, b.arg(ids), `))`)
		} else {
			b.w(r, `.id = ANY(`, b.arg(ids), `)`)
		}
		return
	case "_lastUpdated":
		if c.Modifier == "missing" {
			b.w(boolSQL(!c.Values[0].Missing))
			return
		}
		// updated is in microseconds: the range of one millisecond.
		b.w("(")
		for i, v := range c.Values {
			if i > 0 {
				b.w(" OR ")
			}
			b.dateCond(v, "("+r+".updated / 1000)", "("+r+".updated / 1000 + 1)")
		}
		b.w(")")
		return
	}
	table := tables[c.Type]
	p := text(c.Param.Key())
	if c.Modifier == "missing" {
		not := ""
		if c.Values[0].Missing {
			not = "NOT "
		}
		b.w(not, `EXISTS (SELECT 1 FROM `, table, ` t WHERE t.rid = `, r, `.rid AND t.p = `, b.arg(p), `)`)
		return
	}
	switch {
	case driver:
		b.w(r, `.rid IN (SELECT rid FROM `, table, ` WHERE p = `, b.arg(p), ` AND (`)
	case c.Modifier == "not":
		b.w(`NOT EXISTS (SELECT 1 FROM `, table, ` WHERE rid = `, r, `.rid AND p = `, b.arg(p), ` AND (`)
	default:
		b.w(`EXISTS (SELECT 1 FROM `, table, ` WHERE rid = `, r, `.rid AND p = `, b.arg(p), ` AND (`)
	}
	for i, v := range c.Values {
		if i > 0 {
			b.w(" OR ")
		}
		b.value(c, v)
	}
	b.w("))")
}

func boolSQL(v bool) string {
	if v {
		return "TRUE"
	}
	return "FALSE"
}

func (b *sqlBuilder) value(c *search.Clause, v search.Value) {
	switch c.Type {
	case search.TypeString:
		s := text(v.Str)
		switch c.Modifier {
		case "exact":
			b.w(`exact = `, b.arg(s))
		case "contains":
			b.w(`strpos(norm, `, b.arg(s), `) > 0`)
		default:
			b.w(`(norm >= `, b.arg(s), ` AND norm < `, b.arg(s+maxRune), `)`)
		}
	case search.TypeToken:
		switch {
		case c.Modifier == "text":
			b.w(`strpos(text, `, b.arg(text(v.Str)), `) > 0`)
		case v.AnySystem:
			b.w(`code = `, b.arg(key(v.Code)))
		case v.Code == "":
			b.w(`sys = `, b.arg(key(v.System)))
		default:
			b.w(`(code = `, b.arg(key(v.Code)), ` AND sys = `, b.arg(key(v.System)), `)`)
		}
	case search.TypeReference:
		switch {
		case v.URL != "":
			b.w(`url = `, b.arg(key(v.URL)))
		case v.RefType != "":
			b.w(`(tid = `, b.arg(key(v.RefID)), ` AND ttype = `, b.arg(key(v.RefType)), `)`)
		default:
			b.w(`tid = `, b.arg(key(v.RefID)))
		}
	case search.TypeDate:
		b.dateCond(v, "lo", "hi")
	case search.TypeNumber:
		b.numberCond(v)
	case search.TypeQuantity:
		b.w("(")
		b.numberCond(v)
		if v.Code != "" {
			b.w(` AND code = `, b.arg(key(v.Code)))
		}
		if v.System != "" {
			b.w(` AND sys = `, b.arg(key(v.System)))
		}
		b.w(")")
	case search.TypeURI:
		s := key(v.Str)
		switch c.Modifier {
		case "below":
			b.w(`(v >= `, b.arg(s), ` AND v < `, b.arg(s+maxRune), `)`)
		case "above":
			b.w(`substr(`, b.arg(s), `, 1, length(v)) = v`)
		default:
			b.w(`v = `, b.arg(s))
		}
	}
}

// dateCond compares the target range [lo, hi) with the search range
// [v.Lo, v.Hi) as the prefix asks.
func (b *sqlBuilder) dateCond(v search.Value, lo, hi string) {
	switch v.Prefix {
	case "eq":
		b.w(`(`, lo, ` >= `, b.arg(v.Lo), ` AND `, hi, ` <= `, b.arg(v.Hi), `)`)
	case "ne":
		b.w(`NOT (`, lo, ` >= `, b.arg(v.Lo), ` AND `, hi, ` <= `, b.arg(v.Hi), `)`)
	case "gt":
		b.w(hi, ` > `, b.arg(v.Hi))
	case "lt":
		b.w(lo, ` < `, b.arg(v.Lo))
	case "ge":
		b.w(`(`, hi, ` > `, b.arg(v.Hi), ` OR (`, lo, ` >= `, b.arg(v.Lo), ` AND `, hi, ` <= `, b.arg(v.Hi), `))`)
	case "le":
		b.w(`(`, lo, ` < `, b.arg(v.Lo), ` OR (`, lo, ` >= `, b.arg(v.Lo), ` AND `, hi, ` <= `, b.arg(v.Hi), `))`)
	case "sa":
		b.w(lo, ` >= `, b.arg(v.Hi))
	case "eb":
		b.w(hi, ` <= `, b.arg(v.Lo))
	case "ap":
		a, z := search.ApproxRange(v.Lo, v.Hi, b.now)
		b.w(`(`, lo, ` < `, b.arg(z), ` AND `, hi, ` > `, b.arg(a), `)`)
	}
}

func (b *sqlBuilder) numberCond(v search.Value) {
	switch v.Prefix {
	case "eq":
		b.w(`(v >= `, b.arg(v.Num-v.Half), ` AND v < `, b.arg(v.Num+v.Half), `)`)
	case "ne":
		b.w(`NOT (v >= `, b.arg(v.Num-v.Half), ` AND v < `, b.arg(v.Num+v.Half), `)`)
	case "gt", "sa":
		b.w(`v > `, b.arg(v.Num))
	case "lt", "eb":
		b.w(`v < `, b.arg(v.Num))
	case "ge":
		b.w(`v >= `, b.arg(v.Num))
	case "le":
		b.w(`v <= `, b.arg(v.Num))
	case "ap":
		lo, hi := search.ApproxNumber(v.Num, v.Half)
		b.w(`(v >= `, b.arg(lo), ` AND v <= `, b.arg(hi), `)`)
	}
}

func (b *sqlBuilder) sortKey(k search.SortKey) {
	dir := " ASC"
	agg := "min"
	if k.Desc {
		dir, agg = " DESC", "max"
	}
	switch k.Name {
	case "_id":
		b.order = append(b.order, "r.id"+dir)
		return
	case "_lastUpdated":
		b.order = append(b.order, "r.seq"+dir)
		return
	}
	col := map[string]string{
		search.TypeString: "norm", search.TypeToken: "code", search.TypeDate: "lo",
		search.TypeNumber: "v", search.TypeQuantity: "v", search.TypeURI: "v",
	}[k.Param.Type]
	if k.Param.Type == search.TypeDate && k.Desc {
		col = "hi"
	}
	// The key is a generated parameter name, safe to inline as a literal
	// (quotes doubled all the same).
	b.order = append(b.order, `(SELECT `+agg+`(`+col+`) FROM `+tables[k.Param.Type]+` s WHERE s.rid = r.rid AND s.p = '`+
		strings.ReplaceAll(text(k.Param.Key()), "'", "''")+`')`+dir+` NULLS LAST`)
}
