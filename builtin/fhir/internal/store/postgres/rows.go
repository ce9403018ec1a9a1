package postgres

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
)

// tableDef describes a table the store writes rows of in bulk.
type tableDef struct {
	name  string
	cols  []string
	types []string // PostgreSQL types, for unnest
	// insert is the INSERT … SELECT FROM unnest(…) of rows given as one
	// array per column.
	insert string
}

func newTable(name, cols, types string) *tableDef {
	t := &tableDef{name: name, cols: strings.Split(cols, ","), types: strings.Split(types, ",")}
	params := make([]string, len(t.types))
	for i, ty := range t.types {
		params[i] = "$" + strconv.Itoa(i+1) + "::" + ty + "[]"
	}
	t.insert = `INSERT INTO ` + name + ` (` + cols + `) SELECT * FROM unnest(` + strings.Join(params, ", ") + `)`
	return t
}

// bulkTables are written in this order.
var bulkTables = []*tableDef{
	newTable("history", "seq,rid,type,version,updated,deleted,method,body", "bigint,bigint,text,bigint,bigint,boolean,text,bytea"),
	newTable("sp_string", "rid,p,norm,exact", "bigint,text,text,text"),
	newTable("sp_token", "rid,p,sys,code,text", "bigint,text,text,text,text"),
	newTable("sp_ref", "rid,p,ttype,tid,url", "bigint,text,text,text,text"),
	newTable("sp_date", "rid,p,lo,hi", "bigint,text,bigint,bigint"),
	newTable("sp_number", "rid,p,v", "bigint,text,float8"),
	newTable("sp_quantity", "rid,p,v,sys,code", "bigint,text,float8,text,text"),
	newTable("sp_uri", "rid,p,v", "bigint,text,text"),
	newTable("compartment", "rid,patient", "bigint,text"),
	newTable("history_compartment", "patient,seq", "text,bigint"),
}

// rowSet holds rows of one table.
type rowSet struct{ rows [][]any }

func (r *rowSet) add(vals ...any) { r.rows = append(r.rows, vals) }

// table returns the rowSet of name in set, made if needed.
func table(set map[string]*rowSet, name string) *rowSet {
	r := set[name]
	if r == nil {
		r = &rowSet{}
		set[name] = r
	}
	return r
}

// distinct returns xs without repeats, in order (rows of one resource
// are written once, as SQLite's primary keys keep them).
func distinct[T comparable](xs []T) []T {
	if len(xs) < 2 {
		return xs
	}
	seen := make(map[T]bool, len(xs))
	out := xs[:0:0]
	for _, x := range xs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// mapped applies f to each of xs.
func mapped[T any](xs []T, f func(T) T) []T {
	out := make([]T, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

// addRows adds the index rows of a resource's version seq to set, in the
// form they are stored (see text and key).
func addRows(set map[string]*rowSet, rid, seq int64, e *search.Entries) {
	if len(e.Strings) > 0 {
		t := table(set, "sp_string")
		for _, x := range distinct(mapped(e.Strings, func(x search.StringEntry) search.StringEntry {
			return search.StringEntry{Param: text(x.Param), Norm: text(x.Norm), Exact: text(x.Exact)}
		})) {
			t.add(rid, x.Param, x.Norm, x.Exact)
		}
	}
	if len(e.Tokens) > 0 {
		t := table(set, "sp_token")
		for _, x := range distinct(mapped(e.Tokens, func(x search.TokenEntry) search.TokenEntry {
			return search.TokenEntry{Param: text(x.Param), System: key(x.System), Code: key(x.Code), Text: text(x.Text)}
		})) {
			t.add(rid, x.Param, x.System, x.Code, x.Text)
		}
	}
	if len(e.Refs) > 0 {
		t := table(set, "sp_ref")
		for _, x := range distinct(mapped(e.Refs, func(x search.RefEntry) search.RefEntry {
			return search.RefEntry{Param: text(x.Param), Type: key(x.Type), ID: key(x.ID), URL: key(x.URL)}
		})) {
			t.add(rid, x.Param, x.Type, x.ID, x.URL)
		}
	}
	if len(e.Dates) > 0 {
		t := table(set, "sp_date")
		for _, x := range distinct(e.Dates) {
			t.add(rid, text(x.Param), x.Lo, x.Hi)
		}
	}
	if len(e.Numbers) > 0 {
		t := table(set, "sp_number")
		for _, x := range distinct(e.Numbers) {
			t.add(rid, text(x.Param), x.Value)
		}
	}
	if len(e.Quantities) > 0 {
		t := table(set, "sp_quantity")
		for _, x := range distinct(mapped(e.Quantities, func(x search.QuantityEntry) search.QuantityEntry {
			return search.QuantityEntry{Param: text(x.Param), Value: x.Value, System: key(x.System), Code: key(x.Code)}
		})) {
			t.add(rid, x.Param, x.Value, x.System, x.Code)
		}
	}
	if len(e.URIs) > 0 {
		t := table(set, "sp_uri")
		for _, x := range distinct(mapped(e.URIs, func(x search.URIEntry) search.URIEntry {
			return search.URIEntry{Param: text(x.Param), Value: key(x.Value)}
		})) {
			t.add(rid, x.Param, x.Value)
		}
	}
	if len(e.Compartments) > 0 {
		c, hc := table(set, "compartment"), table(set, "history_compartment")
		for _, p := range distinct(mapped(e.Compartments, key)) {
			c.add(rid, p)
			hc.add(p, seq)
		}
	}
}

// rowCount is the number of rows in set.
func rowCount(set map[string]*rowSet) int {
	n := 0
	for _, r := range set {
		n += len(r.rows)
	}
	return n
}

// writeRows inserts the rows of set: with COPY (one round trip per table:
// for many rows), or with one INSERT … SELECT FROM unnest(…) per table,
// all in one batch (one round trip: for the few rows of a Put).
func (w *writeTx) writeRows(ctx context.Context, set map[string]*rowSet, useCopy bool) error {
	bctx, cancel := w.bound(ctx)
	defer cancel()
	if useCopy {
		for _, t := range bulkTables {
			r := set[t.name]
			if r == nil || len(r.rows) == 0 {
				continue
			}
			if _, err := w.tx.CopyFrom(bctx, pgx.Identifier{t.name}, t.cols, pgx.CopyFromRows(r.rows)); err != nil {
				return fmt.Errorf("write %s: %w", t.name, classify(ctx, err))
			}
		}
		return nil
	}
	b := &pgx.Batch{}
	for _, t := range bulkTables {
		r := set[t.name]
		if r == nil || len(r.rows) == 0 {
			continue
		}
		b.Queue(t.insert, columns(t, r.rows)...)
	}
	if b.Len() == 0 {
		return nil
	}
	if err := w.tx.SendBatch(bctx, b).Close(); err != nil {
		return fmt.Errorf("write index: %w", classify(ctx, err))
	}
	return nil
}

// columns turns rows into one typed slice per column of t.
func columns(t *tableDef, rows [][]any) []any {
	out := make([]any, len(t.types))
	for c, ty := range t.types {
		switch ty {
		case "bigint":
			col := make([]int64, len(rows))
			for i, r := range rows {
				col[i] = r[c].(int64)
			}
			out[c] = col
		case "text":
			col := make([]string, len(rows))
			for i, r := range rows {
				col[i] = r[c].(string)
			}
			out[c] = col
		case "float8":
			col := make([]float64, len(rows))
			for i, r := range rows {
				col[i] = r[c].(float64)
			}
			out[c] = col
		case "boolean":
			col := make([]bool, len(rows))
			for i, r := range rows {
				col[i] = r[c].(bool)
			}
			out[c] = col
		case "bytea":
			col := make([][]byte, len(rows))
			for i, r := range rows {
				col[i] = r[c].([]byte)
			}
			out[c] = col
		}
	}
	return out
}
