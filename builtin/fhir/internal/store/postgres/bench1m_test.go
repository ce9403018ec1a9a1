package postgres

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/storetest"
)

// Bench1MEnv opts in to BenchmarkSearch1M: loading a million resources
// takes minutes, so it never runs in make test.
const bench1MEnv = "OMNIGATE_BENCH_1M"

// searches1M is how many searches BenchmarkSearch1M times per op.
const searches1M = 2000

// BenchmarkSearch1M runs Observation?patient=X&code=… over 1,000,000
// resources: 1,332 re-identified copies of the Synthea test data (751
// resources each) written by the bulk path (Loader.PutAll, COPY), one copy
// per transaction. Each op is searches1M searches as the REST API makes
// them (Search, Count, Fetch) for random patients; it reports their p50
// and p99 and logs the plans (EXPLAIN ANALYZE) of the search and count.
// Run it with
//
//	OMNIGATE_BENCH_1M=1 go test -run '^$' -bench Search1M -benchtime 1x -timeout 60m ./builtin/fhir/internal/store/postgres/
//
// The private server runs with fsync off (the load's speed; reads do not
// touch the disk's flushes).
func BenchmarkSearch1M(b *testing.B) {
	if os.Getenv(bench1MEnv) == "" {
		b.Skip("set " + bench1MEnv + "=1: loads 1,000,000 resources (minutes)")
	}
	ctx := context.Background()
	// ANALYZE of a million resources takes longer than the default 5 s.
	s := open(b, Options{StatementTimeout: 30 * time.Minute})
	copies := (1_000_000 + 750) / 751
	syntheaOnce.Do(func() { syntheaRes = storetest.Synthea(b) })
	start := time.Now()
	// One goroutine makes the copies (bodies and index entries) while the
	// loop writes the previous ones.
	type batch struct {
		vs  []*store.Version
		idx []*search.Entries
		err error
	}
	batches := make(chan batch, 4)
	go func() {
		defer close(batches)
		var pairs []string
		for _, r := range syntheaRes {
			pairs = append(pairs, `"`+r.Type+`/`+r.ID+`"`, "")
		}
		for k := range copies {
			sfx := fmt.Sprintf("-c%d", k)
			for i := 0; i < len(pairs); i += 2 {
				pairs[i+1] = pairs[i][:len(pairs[i])-1] + sfx + `"`
			}
			rep := strings.NewReplacer(pairs...)
			bt := batch{vs: make([]*store.Version, len(syntheaRes)), idx: make([]*search.Entries, len(syntheaRes))}
			for j, r := range syntheaRes {
				body := rep.Replace(r.Body)
				bt.idx[j], bt.err = storetest.Index(r.Type, r.ID+sfx, body)
				if bt.err != nil {
					break
				}
				bt.vs[j] = &store.Version{Type: r.Type, ID: r.ID + sfx, Version: 1, Updated: start, Method: "PUT", Body: []byte(body)}
			}
			batches <- bt
			if bt.err != nil {
				return
			}
		}
	}()
	for bt := range batches {
		if bt.err != nil {
			b.Fatal(bt.err)
		}
		if err := s.Load(ctx, bt.vs, bt.idx); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := s.pool.Exec(ctx, `ANALYZE`); err != nil {
		b.Fatal(err)
	}
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM resources`).Scan(&n); err != nil {
		b.Fatal(err)
	}
	b.Logf("loaded %d resources in %s", n, time.Since(start).Round(time.Second))

	params := "patient=%s&code=" + url.QueryEscape("http://loinc.org|72166-2")
	patients := []string{"85", "355", "888"}
	query := func(patient string) *search.Query {
		v, _ := url.ParseQuery(strings.ReplaceAll(params, "%s", patient))
		q, err := search.Parse("Observation", v, search.Options{})
		if err != nil {
			b.Fatal(err)
		}
		return q
	}
	explain1M(b, s, query("355-c700"))
	var lat []time.Duration
	found := 0
	cpu0 := cpuTime()
	b.ResetTimer()
	for range b.N {
		for range searches1M {
			q := query(fmt.Sprintf("%s-c%d", patients[rand.IntN(len(patients))], rand.IntN(copies)))
			t0 := time.Now()
			ms, err := s.Search(ctx, q, 0, q.Count)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Count(ctx, q); err != nil {
				b.Fatal(err)
			}
			page, err := s.Fetch(ctx, ms)
			if err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
			found += len(page)
		}
	}
	b.StopTimer()
	reportCPU(b, cpu0, nil, float64(b.N*searches1M), "search")
	slices.Sort(lat)
	b.ReportMetric(float64(found)/float64(len(lat)), "found/search")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}

// explain1M logs the plans of q's search and count, run with their
// arguments, and fails when either reads a table without an index.
func explain1M(b *testing.B, s *Store, q *search.Query) {
	ctx := context.Background()
	sb, cb := buildSearch(q), buildSearch(q)
	lim, off := sb.arg(int64(q.Count)), sb.arg(int64(0))
	for _, st := range []struct {
		name, sql string
		args      []any
	}{
		{"search", `SELECT r.rid, r.version FROM resources r WHERE ` + sb.where.String() + sb.orderBy() + ` LIMIT ` + lim + ` OFFSET ` + off, sb.args},
		{"count", `SELECT count(*) FROM resources r WHERE ` + cb.where.String(), cb.args},
	} {
		rows, err := s.pool.Query(ctx, `EXPLAIN (ANALYZE, BUFFERS) `+st.sql, planned(st.args)...)
		if err != nil {
			b.Errorf("%s: %v", st.name, err)
			continue
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			b.Errorf("%s: %v", st.name, err)
			continue
		}
		plan := strings.Join(lines, "\n")
		b.Logf("%s: %s\n%s", st.name, st.sql, plan)
		if strings.Contains(plan, "Seq Scan") {
			b.Errorf("%s reads a table without an index:\n%s", st.name, plan)
		}
	}
}
