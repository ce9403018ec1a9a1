package sqlite

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

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

func (b *sqlBuilder) add(s string, args ...any) {
	b.where.WriteString(s)
	b.args = append(b.args, args...)
}

// maxRune is appended to a prefix to bound a range of strings starting
// with it.
const maxRune = "\U0010FFFF"

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
	r := b.r
	byID := idDriven(q.Clauses)
	driver := -1
	if !byID && q.Compartment == "" {
		driver = pickDriver(q.Clauses)
	}
	if !byID && (q.Compartment != "" || driver >= 0) {
		// Another condition finds the candidates: keep SQLite from
		// scanning every resource of the type ("+" disables the index).
		b.add(`+`+r+`.type = ? AND `+r+`.deleted = 0`, q.Type)
	} else {
		// The (type, id) index finds them: every resource of the type, or
		// the ids an _id clause names.
		b.add(r+`.type = ? AND `+r+`.deleted = 0`, q.Type)
	}
	if q.Compartment != "" {
		b.compartment(q.Type, q.Compartment, !byID)
	}
	for i := range q.Clauses {
		b.where.WriteString(" AND ")
		b.clause(q.Type, &q.Clauses[i], i == driver)
	}
	if len(q.Alternatives) > 0 {
		b.alternatives(q.Type, q.Alternatives)
	}
}

// chain adds a chained or _has clause of a search of typ: the candidates
// are found through the reference index from the matches of the inner
// searches, each written as a subquery over resources under an alias of
// its own, so that nothing is loaded before the one statement runs.
func (b *sqlBuilder) chain(typ string, ch *search.Chain) {
	r, t := b.r, "t"+strconv.Itoa(b.depth)
	b.depth++
	inner := "r" + strconv.Itoa(b.depth)
	defer func() { b.r = r; b.depth-- }()
	if ch.Rev {
		// The resources of typ that a match of the inner search refers to
		// through ch.Param.
		b.add(r+`.rid IN (SELECT x.rid FROM resources x WHERE x.type = ? AND x.id IN (SELECT `+t+`.tid FROM sp_ref `+t+
			` WHERE `+t+`.p = ? AND `+t+`.ttype = ? AND `+t+`.rid IN (SELECT `+inner+`.rid FROM resources `+inner+` WHERE `,
			typ, ch.Param.Key(), typ)
		b.r = inner
		b.conditions(ch.Queries[0])
		b.where.WriteString(`)))`)
		return
	}
	// The resources whose ch.Param refers to a match of one of the inner
	// searches.
	b.where.WriteString("(")
	for i, in := range ch.Queries {
		if i > 0 {
			b.where.WriteString(" OR ")
		}
		b.add(r+`.rid IN (SELECT `+t+`.rid FROM sp_ref `+t+` WHERE `+t+`.p = ? AND `+t+`.ttype = ? AND `+t+
			`.tid IN (SELECT `+inner+`.id FROM resources `+inner+` WHERE `, ch.Param.Key(), in.Type)
		b.r = inner
		b.conditions(in)
		b.r = r
		b.where.WriteString(`))`)
	}
	b.where.WriteString(")")
}

// composite adds a composite clause: for each value, a row of the last
// components' table under the key that folds in the first component (two
// components), or rows of one instance for every component (more; see
// search.CompositeKey).
func (b *sqlBuilder) composite(c *search.Clause, driver bool) {
	comps := c.Param.Components()
	if len(comps) == 2 {
		part := &search.Clause{Type: comps[1].Type}
		table := tables[comps[1].Type]
		if driver {
			b.where.WriteString(b.r + `.rid IN (SELECT rid FROM ` + table + ` WHERE (`)
		} else {
			b.where.WriteString(`EXISTS (SELECT 1 FROM ` + table + ` WHERE rid = ` + b.r + `.rid AND (`)
		}
		for i, v := range c.Values {
			if i > 0 {
				b.where.WriteString(" OR ")
			}
			b.add(`(p = ? AND `, search.CompositeKey(c.Param, v, 1))
			b.value(part, v.Parts[1])
			b.where.WriteString(")")
		}
		b.where.WriteString("))")
		return
	}
	// More components: the rows of component 1 of one instance, then
	// those of the others of the same instance.
	if driver {
		b.where.WriteString(b.r + `.rid IN (SELECT a.rid FROM ` + tables[comps[1].Type] + ` a WHERE (`)
	} else {
		b.where.WriteString(`EXISTS (SELECT 1 FROM ` + tables[comps[1].Type] + ` a WHERE a.rid = ` + b.r + `.rid AND (`)
	}
	for i, v := range c.Values {
		if i > 0 {
			b.where.WriteString(" OR ")
		}
		first := search.CompositeKey(c.Param, v, 1)
		b.add(`(a.p >= ? AND a.p < ? AND `, first, first+maxRune)
		b.value(&search.Clause{Type: comps[1].Type}, v.Parts[1])
		for j := 2; j < len(comps); j++ {
			// The instance number follows the prefix of component 1.
			b.add(` AND EXISTS (SELECT 1 FROM `+tables[comps[j].Type]+` WHERE rid = a.rid AND p = ? || substr(a.p, ?) AND `,
				search.CompositeKey(c.Param, v, j), utf8.RuneCountInString(first)+1)
			b.value(&search.Clause{Type: comps[j].Type}, v.Parts[j])
			b.where.WriteString(")")
		}
		b.where.WriteString(")")
	}
	b.where.WriteString("))")
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

// compartment confines the search to the Patient compartment of patient.
//
// When the compartment drives the search, the members of the searched type
// are found through the references that make them members (Observation.subject
// and Observation.performer pointing at the patient; a Patient's own id and
// its links), which the index holds by parameter and value: only resources
// of the searched type, as a hand-written patient=… search would find them.
// That set is exactly the type's rows of the compartment table: those rows
// are computed at write time from the same reference entries (see
// search.Index), and TestCompartmentMembership holds the two together.
// Otherwise (an _id clause finds the candidates) each candidate is checked
// against the compartment table.
func (b *sqlBuilder) compartment(typ, patient string, drive bool) {
	params := spec.PatientCompartment[typ]
	switch {
	case !drive:
		b.add(` AND EXISTS (SELECT 1 FROM compartment WHERE rid = `+b.r+`.rid AND patient = ?)`, patient)
	case typ == "Patient":
		b.add(` AND `+b.r+`.rid IN (SELECT rid FROM resources WHERE type = 'Patient' AND id = ?`, patient)
		if len(params) > 0 {
			b.where.WriteString(` UNION ALL `)
			b.refCandidates(typ, params, patient)
		}
		b.where.WriteString(`)`)
	case len(params) > 0:
		b.where.WriteString(` AND ` + b.r + `.rid IN (`)
		b.refCandidates(typ, params, patient)
		b.where.WriteString(`)`)
	default:
		// Not a compartment type: the table holds none of its resources.
		b.add(` AND `+b.r+`.rid IN (SELECT rid FROM compartment WHERE patient = ?)`, patient)
	}
}

func (b *sqlBuilder) refCandidates(typ string, params []string, patient string) {
	b.where.WriteString(`SELECT rid FROM sp_ref WHERE p IN (` + placeholders(len(params)) + `) AND tid = ? AND ttype = 'Patient'`)
	for _, p := range params {
		b.args = append(b.args, typ+"."+p)
	}
	b.args = append(b.args, patient)
}

// alternatives adds the OR of the AND-groups of q.Alternatives; each
// clause is a check of the candidates.
func (b *sqlBuilder) alternatives(typ string, groups [][]search.Clause) {
	b.where.WriteString(" AND (")
	for i, g := range groups {
		if i > 0 {
			b.where.WriteString(" OR ")
		}
		b.where.WriteString("(")
		if len(g) == 0 {
			b.where.WriteString("1")
		}
		for j := range g {
			if j > 0 {
				b.where.WriteString(" AND ")
			}
			b.clause(typ, &g[j], false)
		}
		b.where.WriteString(")")
	}
	b.where.WriteString(")")
}

// driverRank orders parameter types by how few rows a value usually
// matches: the best clause drives the search, the others are checked per
// candidate.
var driverRank = map[string]int{
	search.TypeReference: 1, search.TypeToken: 2, search.TypeString: 3, search.TypeURI: 4,
	search.TypeDate: 5, search.TypeQuantity: 6, search.TypeNumber: 7,
	search.TypeChain: 2, search.TypeComposite: 2,
}

// pickDriver returns the index of the clause to drive the search, -1 for
// none (then the resources of the type are scanned).
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

// clause adds one parameter's condition: as the set of candidates when it
// drives the search, else as a check of each candidate through the index
// table's primary key (rid, p, …).
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
			b.add(boolSQL(!c.Values[0].Missing))
			return
		}
		op := "IN"
		if c.Modifier == "not" {
			op = "NOT IN"
		}
		b.add(r + `.id ` + op + ` (` + placeholders(len(c.Values)) + `)`)
		for _, v := range c.Values {
			b.args = append(b.args, v.Code)
		}
		return
	case "_lastUpdated":
		if c.Modifier == "missing" {
			b.add(boolSQL(!c.Values[0].Missing))
			return
		}
		// updated is in microseconds: the range of one millisecond.
		b.where.WriteString("(")
		for i, v := range c.Values {
			if i > 0 {
				b.where.WriteString(" OR ")
			}
			b.dateCond(v, "("+r+".updated / 1000)", "("+r+".updated / 1000 + 1)")
		}
		b.where.WriteString(")")
		return
	}
	table := tables[c.Type]
	p := c.Param.Key()
	if c.Modifier == "missing" {
		not := ""
		if c.Values[0].Missing {
			not = "NOT "
		}
		b.add(not+`EXISTS (SELECT 1 FROM `+table+` t WHERE t.rid = `+r+`.rid AND t.p = ?)`, p)
		return
	}
	switch {
	case driver:
		b.add(r+`.rid IN (SELECT rid FROM `+table+` WHERE p = ? AND (`, p)
	case c.Modifier == "not":
		b.add(`NOT EXISTS (SELECT 1 FROM `+table+` WHERE rid = `+r+`.rid AND p = ? AND (`, p)
	default:
		b.add(`EXISTS (SELECT 1 FROM `+table+` WHERE rid = `+r+`.rid AND p = ? AND (`, p)
	}
	for i, v := range c.Values {
		if i > 0 {
			b.where.WriteString(" OR ")
		}
		b.value(c, v)
	}
	b.where.WriteString("))")
}

func boolSQL(v bool) string {
	if v {
		return "1"
	}
	return "0"
}

func (b *sqlBuilder) value(c *search.Clause, v search.Value) {
	switch c.Type {
	case search.TypeString:
		switch c.Modifier {
		case "exact":
			b.add(`exact = ?`, v.Str)
		case "contains":
			b.add(`instr(norm, ?) > 0`, v.Str)
		default:
			b.add(`(norm >= ? AND norm < ?)`, v.Str, v.Str+maxRune)
		}
	case search.TypeToken:
		switch {
		case c.Modifier == "text":
			b.add(`instr(text, ?) > 0`, v.Str)
		case v.AnySystem:
			b.add(`code = ?`, v.Code)
		case v.Code == "":
			b.add(`sys = ?`, v.System)
		default:
			b.add(`(code = ? AND sys = ?)`, v.Code, v.System)
		}
	case search.TypeReference:
		switch {
		case v.URL != "":
			b.add(`url = ?`, v.URL)
		case v.RefType != "":
			b.add(`(tid = ? AND ttype = ?)`, v.RefID, v.RefType)
		default:
			b.add(`tid = ?`, v.RefID)
		}
	case search.TypeDate:
		b.dateCond(v, "lo", "hi")
	case search.TypeNumber:
		b.numberCond(v)
	case search.TypeQuantity:
		b.where.WriteString("(")
		b.numberCond(v)
		if v.Code != "" {
			b.add(` AND code = ?`, v.Code)
		}
		if v.System != "" {
			b.add(` AND sys = ?`, v.System)
		}
		b.where.WriteString(")")
	case search.TypeURI:
		switch c.Modifier {
		case "below":
			b.add(`(v >= ? AND v < ?)`, v.Str, v.Str+maxRune)
		case "above":
			b.add(`substr(?, 1, length(v)) = v`, v.Str)
		default:
			b.add(`v = ?`, v.Str)
		}
	}
}

// dateCond compares the target range [lo, hi) with the search range
// [v.Lo, v.Hi) as the prefix asks.
func (b *sqlBuilder) dateCond(v search.Value, lo, hi string) {
	switch v.Prefix {
	case "eq":
		b.add(`(`+lo+` >= ? AND `+hi+` <= ?)`, v.Lo, v.Hi)
	case "ne":
		b.add(`NOT (`+lo+` >= ? AND `+hi+` <= ?)`, v.Lo, v.Hi)
	case "gt":
		b.add(hi+` > ?`, v.Hi)
	case "lt":
		b.add(lo+` < ?`, v.Lo)
	case "ge":
		b.add(`(`+hi+` > ? OR (`+lo+` >= ? AND `+hi+` <= ?))`, v.Hi, v.Lo, v.Hi)
	case "le":
		b.add(`(`+lo+` < ? OR (`+lo+` >= ? AND `+hi+` <= ?))`, v.Lo, v.Lo, v.Hi)
	case "sa":
		b.add(lo+` >= ?`, v.Hi)
	case "eb":
		b.add(hi+` <= ?`, v.Lo)
	case "ap":
		a, z := search.ApproxRange(v.Lo, v.Hi, b.now)
		b.add(`(`+lo+` < ? AND `+hi+` > ?)`, z, a)
	}
}

func (b *sqlBuilder) numberCond(v search.Value) {
	switch v.Prefix {
	case "eq":
		b.add(`(v >= ? AND v < ?)`, v.Num-v.Half, v.Num+v.Half)
	case "ne":
		b.add(`NOT (v >= ? AND v < ?)`, v.Num-v.Half, v.Num+v.Half)
	case "gt", "sa":
		b.add(`v > ?`, v.Num)
	case "lt", "eb":
		b.add(`v < ?`, v.Num)
	case "ge":
		b.add(`v >= ?`, v.Num)
	case "le":
		b.add(`v <= ?`, v.Num)
	case "ap":
		lo, hi := search.ApproxNumber(v.Num, v.Half)
		b.add(`(v >= ? AND v <= ?)`, lo, hi)
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
	// Arguments of ORDER BY come after those of WHERE; the key is a
	// generated parameter name, safe to inline as a literal.
	b.order = append(b.order, `(SELECT `+agg+`(`+col+`) FROM `+tables[k.Param.Type]+` s WHERE s.rid = r.rid AND s.p = '`+
		strings.ReplaceAll(k.Param.Key(), "'", "''")+`')`+dir+` NULLS LAST`)
}
