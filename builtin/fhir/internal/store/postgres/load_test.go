package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/storetest"
)

// loadOps are the writes of the bulk load test: the Synthea test data,
// then some of it again (updates), deletions, a resource made again after
// its deletion, and a resource written twice in a row.
func loadOps(t *testing.T) []storetest.Resource {
	rs := storetest.Synthea(t)
	ops := slices.Clone(rs)
	for i, r := range rs {
		switch i % 7 {
		case 0:
			ops = append(ops, r) // a second version
		case 1:
			ops = append(ops, storetest.Resource{Type: r.Type, ID: r.ID}) // deleted
		case 2:
			ops = append(ops, storetest.Resource{Type: r.Type, ID: r.ID}, r) // deleted, made again
		case 3:
			ops = append(ops, r, r)
		}
	}
	return ops
}

// versions turns ops into the versions and index entries Put would be
// given, numbering versions as the server does.
func versions(t *testing.T, ops []storetest.Resource) ([]*store.Version, []*search.Entries) {
	cur := map[string]int64{}
	var vs []*store.Version
	var idx []*search.Entries
	for i, op := range ops {
		k := op.Type + "/" + op.ID
		cur[k]++
		v := &store.Version{Type: op.Type, ID: op.ID, Version: cur[k], Updated: storetest.Epoch.Add(time.Duration(i) * time.Millisecond), Method: "PUT"}
		var e *search.Entries
		if op.Body == "" {
			v.Deleted, v.Method = true, "DELETE"
		} else {
			v.Body = []byte(op.Body)
			var err error
			if e, err = storetest.Index(op.Type, op.ID, op.Body); err != nil {
				t.Fatal(err)
			}
		}
		vs = append(vs, v)
		idx = append(idx, e)
	}
	return vs, idx
}

// dump returns the store's tables as text, rows sorted, rids shown as the
// type/id of their resource (rids are not the same across databases: a
// conflicting insert uses one too).
func dump(t *testing.T, s *Store) map[string][]string {
	ctx := context.Background()
	out := map[string][]string{}
	q := func(table, sql string) {
		rows, err := s.pool.Query(ctx, sql)
		if err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		for rows.Next() {
			vals, err := rows.Values()
			if err != nil {
				t.Fatal(err)
			}
			out[table] = append(out[table], fmt.Sprint(vals...))
		}
		rows.Close()
		slices.Sort(out[table])
	}
	q("resources", `SELECT type, id, version, seq, updated, deleted FROM resources`)
	q("history", `SELECT r.type || '/' || r.id, h.seq, h.type, h.version, h.updated, h.deleted, h.method, encode(sha256(coalesce(h.body, '')), 'hex'), h.body IS NULL
		FROM history h JOIN resources r ON r.rid = h.rid`)
	for _, table := range indexTables {
		q(table, `SELECT r.type || '/' || r.id, t.* FROM `+table+` t JOIN resources r ON r.rid = t.rid`)
	}
	q("history_compartment", `SELECT * FROM history_compartment`)
	var seq int64
	if err := s.pool.QueryRow(ctx, `SELECT last_value FROM history_seq`).Scan(&seq); err != nil {
		t.Fatal(err)
	}
	out["history_seq"] = []string{fmt.Sprint(seq)}
	return out
}

// Loader.PutAll, by INSERT and by COPY, writes exactly what Put writes.
func TestPutAllWritesWhatPutWrites(t *testing.T) {
	ctx := context.Background()
	ops := loadOps(t)
	if len(ops) < 1000 {
		t.Fatalf("only %d writes", len(ops))
	}
	put := open(t, Options{})
	vs, idx := versions(t, ops)
	fresh := func() []*store.Version {
		out := make([]*store.Version, len(vs))
		for i, v := range vs {
			c := *v
			c.Key, c.Seq = 0, 0
			out[i] = &c
		}
		return out
	}
	err := put.Update(ctx, func(tx store.Tx) error {
		for i, v := range vs {
			if err := tx.Put(ctx, v, idx[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := dump(t, put)
	if n := len(want["sp_token"]); n < 1000 {
		t.Fatalf("only %d token rows", n)
	}
	for _, insert := range []bool{false, true} {
		t.Run(fmt.Sprintf("insert=%v", insert), func(t *testing.T) {
			s := open(t, Options{})
			s.bulkInsert = insert
			vs2, idx2 := fresh(), idx
			// In two transactions, the second continuing the first's data.
			half := len(vs2) / 2
			if err := s.Load(ctx, vs2[:half], idx2[:half]); err != nil {
				t.Fatal(err)
			}
			if err := s.Load(ctx, vs2[half:], idx2[half:]); err != nil {
				t.Fatal(err)
			}
			got := dump(t, s)
			for _, table := range append([]string{"resources", "history", "history_compartment", "history_seq"}, indexTables...) {
				if !slices.Equal(got[table], want[table]) {
					t.Errorf("%s: %d rows differ from Put's %d, e.g. %s", table, len(got[table]), len(want[table]), firstDiff(got[table], want[table]))
				}
			}
			for i := range vs {
				if vs2[i].Seq != vs[i].Seq {
					t.Fatalf("version %d: Seq %d, Put gave %d", i, vs2[i].Seq, vs[i].Seq)
				}
				if vs2[i].Key == 0 || (i > 0 && vs2[i].Type == vs2[i-1].Type && vs2[i].ID == vs2[i-1].ID && vs2[i].Key != vs2[i-1].Key) {
					t.Fatalf("version %d: Key %d", i, vs2[i].Key)
				}
			}
		})
	}
}

func firstDiff(a, b []string) string {
	for i := 0; i < min(len(a), len(b)); i++ {
		if a[i] != b[i] {
			return fmt.Sprintf("%q against %q", a[i], b[i])
		}
	}
	return fmt.Sprintf("%d against %d rows", len(a), len(b))
}

// A PutAll whose transaction fails leaves nothing.
func TestPutAllRollback(t *testing.T) {
	ctx := context.Background()
	s := open(t, Options{})
	vs, idx := versions(t, storetest.Synthea(t)[:200])
	boom := fmt.Errorf("boom")
	err := s.Update(ctx, func(tx store.Tx) error {
		if err := tx.(Loader).PutAll(ctx, vs, idx); err != nil {
			return err
		}
		return boom
	})
	if err != boom {
		t.Fatalf("Update: %v", err)
	}
	for _, table := range append([]string{"resources", "history", "history_compartment"}, indexTables...) {
		var n int
		if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{table}.Sanitize()).Scan(&n); err != nil || n != 0 {
			t.Errorf("%s: %d rows after a rollback (%v)", table, n, err)
		}
	}
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.(Loader).PutAll(ctx, vs[:1], idx) }); err == nil ||
		!strings.Contains(err.Error(), "one index entry set per version") {
		t.Errorf("mismatched lengths: %v", err)
	}
}
