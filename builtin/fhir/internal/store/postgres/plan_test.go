package postgres

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
)

// Every query of the store can be served by its indexes: with sequential
// scans turned off, every table is read through an index condition.
func TestPlansUseIndexes(t *testing.T) {
	ctx := context.Background()
	s := open(t, Options{})
	type stmt struct {
		name, sql string
		args      []any
		// indexes must all appear in the plan ("a|b": either).
		indexes []string
	}
	var stmts []stmt
	for _, c := range []struct {
		typ, params, compartment string
		indexes                  []string
	}{
		{"Observation", "code=http://loinc.org|1-1", "a", []string{"sp_ref_v"}},
		{"Observation", "", "a", []string{"sp_ref_v"}},
		{"Observation", "_id=x&category=laboratory", "a", []string{"resources_type_id_key", "compartment_p"}},
		{"Patient", "", "a", []string{"resources_type_id_key", "sp_ref_v"}},
		{"Encounter", "date=ge2020", "a", []string{"sp_ref_v"}},
		{"Practitioner", "", "a", []string{"compartment_p"}},
		{"Observation", "code=http://loinc.org|1-1", "", []string{"sp_token_v"}},
		{"Observation", "subject=Patient/a&date=ge2020&_sort=-date", "", []string{"sp_ref_v"}},
		{"Observation", "patient=a&code=1-1&value-quantity=gt5", "", []string{"sp_ref_v|sp_token_v"}},
		{"Patient", "family=smi&_sort=family", "", []string{"sp_string_v"}},
		{"Patient", "_id=a,b", "", []string{"resources_type_id_key"}},
		{"Patient", "", "", []string{"resources_type_rid|resources_type_id_key"}},
		{"Patient", "_sort=-_lastUpdated", "", []string{"resources_type_rid|resources_type_id_key"}},
		{"ValueSet", "url:below=http://example.org", "", []string{"sp_uri_v"}},
		{"RiskAssessment", "probability=gt0.5", "", []string{"sp_number_v"}},
		{"Observation", "value-quantity=5.4||mg", "", []string{"sp_quantity_v"}},
		{"Patient", "birthdate=lt2000", "", []string{"sp_date_v"}},
		{"Observation", "patient.identifier=http://h|1", "", []string{"sp_token_v", "sp_ref_v"}},
		{"DiagnosticReport", "subject:Patient.general-practitioner.name=who", "", []string{"sp_string_v", "sp_ref_v"}},
		{"Patient", "_has:Observation:patient:code=1234-5", "", []string{"sp_token_v", "sp_ref_v"}},
		{"Patient", "_has:Observation:patient:code=1234-5", "a", []string{"sp_token_v|sp_ref_v"}},
		{"Observation", "component-code-value-quantity=8480-6$gt100", "", []string{"sp_quantity_v"}},
		{"MolecularSequence", "chromosome-variant-coordinate=1$ge2$le3", "", []string{"sp_number_v"}},
	} {
		v, _ := url.ParseQuery(c.params)
		q, err := search.Parse(c.typ, v, search.Options{Now: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		q.Compartment = c.compartment
		b := buildSearch(q)
		lim, off := b.arg(int64(10)), b.arg(int64(0))
		stmts = append(stmts, stmt{c.typ + "?" + c.params + " in " + c.compartment,
			`SELECT r.rid, r.version FROM resources r WHERE ` + b.where.String() + b.orderBy() + ` LIMIT ` + lim + ` OFFSET ` + off, b.args, c.indexes})
	}
	stmts = append(stmts,
		stmt{"read", readSQL, []any{"Patient", "a"}, []string{"resources_type_id_key", "history_pkey"}},
		stmt{"vread", selectVersion + `WHERE r.type = $1 AND r.id = $2 AND h.version = $3`, []any{"Patient", "a", int64(1)}, []string{"history_rid"}},
		stmt{"history of a type", selectVersion + `WHERE h.type = $1 AND h.seq < $2 ORDER BY h.seq DESC LIMIT 10`, []any{"Patient", int64(100)}, []string{"history_type"}},
		stmt{"history of a resource", selectVersion + `WHERE h.rid = (SELECT rid FROM resources WHERE type = $1 AND id = $2) ORDER BY h.seq DESC LIMIT 10`, []any{"Patient", "a"}, []string{"history_rid"}},
		stmt{"history of a compartment", selectVersion + `WHERE h.seq IN (SELECT seq FROM history_compartment WHERE patient = $1) ORDER BY h.seq DESC LIMIT 10`, []any{"a"}, []string{"history_compartment_pkey"}},
		stmt{"fetch", `SELECT ` + versionColumns + ` FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS m(rid, version, ord)
			JOIN history h ON h.rid = m.rid AND h.version = m.version JOIN resources r ON r.rid = h.rid ORDER BY m.ord`, []any{[]int64{1, 2}, []int64{1, 1}}, []string{"history_rid"}},
		stmt{"include", selectVersion + `WHERE h.seq IN (SELECT r2.seq FROM sp_ref s JOIN resources r2 ON r2.type = s.ttype AND r2.id = s.tid
			WHERE s.rid = ANY($1) AND NOT r2.deleted AND s.p = $2) ORDER BY h.seq`, []any{[]int64{1, 2}, "Observation.subject"}, []string{"sp_ref_rid", "resources_type_id_key"}},
		stmt{"revinclude", selectVersion + `WHERE h.seq IN (SELECT r2.seq FROM sp_ref s JOIN resources r2 ON r2.rid = s.rid
			WHERE r2.type = $1 AND NOT r2.deleted AND s.tid = ANY($2) AND s.ttype = ANY($3) AND s.p = $4) ORDER BY h.seq`,
			[]any{"Observation", []string{"a"}, []string{"Patient"}, "Observation.subject"}, []string{"sp_ref_v"}},
		stmt{"put", putSQL, []any{"Patient", "a", int64(1), int64(0), false, "PUT", []byte(`{}`)},
			[]string{"resources_type_id_key", "sp_string_rid", "sp_token_rid", "sp_ref_rid", "sp_date_rid", "sp_number_rid", "sp_quantity_rid", "sp_uri_rid", "compartment_pkey"}},
	)
	for _, st := range stmts {
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL enable_seqscan = off`); err != nil {
				return err
			}
			rows, err := tx.Query(ctx, `EXPLAIN `+st.sql, st.args...)
			if err != nil {
				return err
			}
			var plan []string
			for rows.Next() {
				var line string
				if err := rows.Scan(&line); err != nil {
					return err
				}
				plan = append(plan, line)
			}
			rows.Close()
			all := strings.Join(plan, "\n")
			for _, want := range st.indexes {
				ok := false
				for _, ix := range strings.Split(want, "|") {
					ok = ok || strings.Contains(all, " on "+ix+" ") || strings.Contains(all, " using "+ix+" ")
				}
				if !ok {
					t.Errorf("%s does not use %s:\n%s", st.name, want, all)
				}
			}
			for i, line := range plan {
				// A table scanned, or an index read whole (without a
				// condition on its leading columns).
				if strings.Contains(line, "Seq Scan") ||
					strings.Contains(line, "Index") && strings.Contains(line, " Scan") && (i+1 == len(plan) || !strings.Contains(plan[i+1], "Index Cond:")) {
					t.Errorf("%s scans:\n%s", st.name, strings.Join(plan, "\n"))
					break
				}
			}
			return rows.Err()
		})
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
	}
}

// Searches, counts, includes and histories are planned with their
// arguments every time, never prepared (a prepared statement gets a
// generic plan after five executions, which may drive a search by its
// least selective condition); the fixed statements are prepared.
func TestSearchesAreNotPrepared(t *testing.T) {
	ctx := context.Background()
	s := open(t, Options{MaxConns: 1}) // one connection: its statements are the store's
	if _, err := bump(ctx, s, "Patient", "a", `{}`); err != nil {
		t.Fatal(err)
	}
	q, err := search.Parse("Observation", url.Values{"patient": {"a"}, "code": {"http://loinc.org|1-1"}}, search.Options{})
	if err != nil {
		t.Fatal(err)
	}
	page := []*store.Version{{Key: 1, Type: "Patient", ID: "a"}}
	for range 7 {
		if _, err := s.Search(ctx, q, 0, 10); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Count(ctx, q); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Include(ctx, page, search.Include{Rev: true, Source: "Observation"}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.History(ctx, store.HistoryQuery{Type: "Patient", Compartment: "a", Count: 10}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Read(ctx, "Patient", "a"); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := s.pool.Query(ctx, `SELECT statement FROM pg_prepared_statements`)
	if err != nil {
		t.Fatal(err)
	}
	prepared, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	read := false
	for _, p := range prepared {
		read = read || p == readSQL
		if strings.Contains(p, "FROM resources r WHERE") || strings.Contains(p, "FROM history h WHERE") ||
			strings.Contains(p, "FROM sp_ref s JOIN") {
			t.Errorf("prepared: %s", p)
		}
	}
	if !read {
		t.Errorf("the read by id is not prepared: %q", prepared)
	}
}
