package postgres

// Benchmarks of the PostgreSQL store side by side with the SQLite store,
// in one run (docs/BENCHMARKS.md has the figures):
//
//	go test -run '^$' -bench . -benchmem ./builtin/fhir/internal/store/postgres/
//
// The PostgreSQL server is a private one started by the benchmark, with
// fsync on (as production runs it); the SQLite store is a file with sync
// "full" (its default). Both acknowledge a commit once it is on disk.

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/sqlite"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/storetest"
	"github.com/omnigate/omnigate/internal/pgtest"
)

// benchServer starts a private PostgreSQL server with fsync on for one
// benchmark.
func benchServer(b *testing.B) *pgtest.Server {
	srv := pgtest.Start(b, "-c", "fsync=on", "-c", "full_page_writes=on")
	c, err := pgx.Connect(context.Background(), srv.URL("postgres"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(context.Background())
	var fsync string
	if err := c.QueryRow(context.Background(), `SHOW fsync`).Scan(&fsync); err != nil || fsync != "on" {
		b.Fatalf("fsync %q %v", fsync, err)
	}
	return srv
}

// benchStores opens the stores compared: SQLite on a file (sync full), and
// PostgreSQL on srv, each with and without the read cache when cache.
func benchStores(b *testing.B, srv *pgtest.Server, cache bool) []namedStore {
	ctx := context.Background()
	var out []namedStore
	sizes := []int64{0}
	if cache {
		sizes = []int64{0, 64 << 20}
	}
	for _, size := range sizes {
		suffix := ""
		if cache {
			suffix = map[bool]string{true: "/cache=on", false: "/cache=off"}[size > 0]
		}
		sq, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "bench.db"), sqlite.Options{CacheBytes: size})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { sq.Close() })
		pg := open(b, Options{URL: srv.NewDatabase(b), CacheBytes: size})
		if size > 0 {
			deadline := time.Now().Add(10 * time.Second)
			for !pg.cache.live.Load() && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		}
		out = append(out, namedStore{"sqlite" + suffix, sq}, namedStore{"postgres" + suffix, pg})
	}
	return out
}

type namedStore struct {
	name string
	s    store.Store
}

// serverCPU is serverCPU for the PostgreSQL store, nil for SQLite (in
// process: its CPU time is the benchmark's).
func (ns namedStore) serverCPU(b *testing.B) func() time.Duration {
	if pg, ok := ns.s.(*Store); ok {
		return serverCPU(b, pg)
	}
	return nil
}

// serverCPU returns a function that reports the CPU time the server's
// processes serving database db have used since serverCPU was called
// (from /proc: the benchmark runs on the server's machine). The backends
// must exist when it is called (a warmed pool).
func serverCPU(b *testing.B, s *Store) func() time.Duration {
	ctx := context.Background()
	rows, err := s.pool.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database()`)
	if err != nil {
		b.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		b.Fatal(err)
	}
	return procCPU(pids)
}

// procCPU returns a function that reports the CPU time processes pids
// have used since procCPU was called.
func procCPU(pids []int32) func() time.Duration {
	read := func() time.Duration {
		var total time.Duration
		for _, pid := range pids {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				continue
			}
			// Fields after the command (which may hold spaces): utime and
			// stime are the 14th and 15th, in clock ticks of 10 ms.
			f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			total += time.Duration(ut+st) * 10 * time.Millisecond
		}
		return total
	}
	start := read()
	return func() time.Duration { return read() - start }
}

// reportCPU reports the benchmark process's CPU time per op, and the
// server's when server is not nil.
func reportCPU(b *testing.B, cpu0 time.Duration, server func() time.Duration, per float64, unit string) {
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/per, "cpu-µs/"+unit)
	if server != nil {
		b.ReportMetric(float64(server().Microseconds())/per, "server-cpu-µs/"+unit)
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// prepared is a resource with its index entries.
type prepared struct {
	typ, id string
	body    []byte
	idx     *search.Entries
}

var (
	syntheaOnce sync.Once
	syntheaRes  []storetest.Resource
)

// generate returns copies of the Synthea test data (751 resources: the
// patients 85, 355 and 888 and what refers to them), copy k's ids and
// references ending in "-ck", with their index entries.
func generate(b *testing.B, copies int) []prepared {
	syntheaOnce.Do(func() { syntheaRes = storetest.Synthea(b) })
	var pairs []string
	for _, r := range syntheaRes {
		pairs = append(pairs, `"`+r.Type+`/`+r.ID+`"`, "")
	}
	out := make([]prepared, 0, copies*len(syntheaRes))
	for k := range copies {
		sfx := fmt.Sprintf("-c%d", k)
		for i := 0; i < len(pairs); i += 2 {
			pairs[i+1] = pairs[i][:len(pairs[i])-1] + sfx + `"`
		}
		rep := strings.NewReplacer(pairs...)
		for _, r := range syntheaRes {
			body := rep.Replace(r.Body)
			idx, err := storetest.Index(r.Type, r.ID+sfx, body)
			if err != nil {
				b.Fatal(err)
			}
			out = append(out, prepared{r.Type, r.ID + sfx, []byte(body), idx})
		}
	}
	return out
}

// load writes rs as new resources, one transaction per chunk.
func load(b *testing.B, s store.Store, rs []prepared, chunk int) {
	ctx := context.Background()
	now := time.Now()
	for start := 0; start < len(rs); start += chunk {
		part := rs[start:min(len(rs), start+chunk)]
		err := s.Update(ctx, func(tx store.Tx) error {
			for _, r := range part {
				v := &store.Version{Type: r.typ, ID: r.id, Version: 1, Updated: now, Method: "PUT", Body: r.body}
				if err := tx.Put(ctx, v, r.idx); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRead reads resources by id, one at a time, from a store of the
// Synthea test data, with the read cache on and off.
func BenchmarkRead(b *testing.B) {
	srv := benchServer(b)
	rs := generate(b, 1)
	ctx := context.Background()
	for _, ns := range benchStores(b, srv, true) {
		load(b, ns.s, rs, len(rs))
		b.Run(ns.name, func(b *testing.B) {
			for _, r := range rs[:64] { // warm: the cache holds them all
				if _, err := ns.s.Read(ctx, r.typ, r.id); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			server := ns.serverCPU(b)
			cpu0 := cpuTime()
			b.ResetTimer()
			for i := range b.N {
				r := rs[i%64] // a working set the cache holds
				if _, err := ns.s.Read(ctx, r.typ, r.id); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu0, server, float64(b.N), "op")
		})
	}
}

// BenchmarkPut writes one resource per transaction (a create, then
// updates of it): a single-resource write as the REST API makes it, with
// the read of the current version inside the transaction.
func BenchmarkPut(b *testing.B) {
	srv := benchServer(b)
	rs := generate(b, 1)
	var obs prepared
	for _, r := range rs {
		if r.typ == "Observation" {
			obs = r
			break
		}
	}
	ctx := context.Background()
	for _, ns := range benchStores(b, srv, false) {
		b.Run(ns.name, func(b *testing.B) {
			b.ReportAllocs()
			server := ns.serverCPU(b)
			cpu0 := cpuTime()
			b.ResetTimer()
			for i := range b.N {
				id := fmt.Sprintf("put-%d", i%100)
				err := ns.s.Update(ctx, func(tx store.Tx) error {
					version := int64(1)
					if cur, err := tx.Read(ctx, "Observation", id); err == nil {
						version = cur.Version + 1
					}
					return tx.Put(ctx, &store.Version{Type: "Observation", ID: id, Version: version, Updated: time.Now(),
						Method: "PUT", Body: obs.body}, obs.idx)
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu0, server, float64(b.N), "op")
		})
	}
}

// BenchmarkPutParallel writes one resource per transaction from 8
// goroutines: on SQLite through one store, on PostgreSQL through one store
// or two (two instances, four goroutines each). Writes are serialized on
// both, so writes/s is what one database takes, whatever the number of
// instances.
func BenchmarkPutParallel(b *testing.B) {
	srv := benchServer(b)
	rs := generate(b, 1)
	obs := rs[slices.IndexFunc(rs, func(r prepared) bool { return r.typ == "Observation" })]
	ctx := context.Background()
	sq, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "bench.db"), sqlite.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer sq.Close()
	url := srv.NewDatabase(b)
	pg1, pg2 := open(b, Options{URL: url}), open(b, Options{URL: url})
	for _, c := range []struct {
		name   string
		stores []store.Store
	}{
		{"sqlite", []store.Store{sq}},
		{"postgres/1-instance", []store.Store{pg1}},
		{"postgres/2-instances", []store.Store{pg1, pg2}},
	} {
		b.Run(c.name, func(b *testing.B) {
			var next atomic.Int64
			b.SetParallelism(4) // 8 goroutines on 2 CPUs
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				g := next.Add(1)
				s := c.stores[int(g)%len(c.stores)]
				for i := 0; pb.Next(); i++ {
					id := fmt.Sprintf("pp-%d-%d", g, i%50)
					err := s.Update(ctx, func(tx store.Tx) error {
						version := int64(1)
						if cur, err := tx.Read(ctx, "Observation", id); err == nil {
							version = cur.Version + 1
						}
						return tx.Put(ctx, &store.Version{Type: "Observation", ID: id, Version: version, Updated: time.Now(),
							Method: "PUT", Body: obs.body}, obs.idx)
					})
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
		})
	}
}

// BenchmarkCacheInvalidation measures how long a resource cached by one
// instance stays in its cache after another instance commits a new
// version: from the return of the writer's Update to the drop of the
// entry by the notification (the bound on serving a stale version).
func BenchmarkCacheInvalidation(b *testing.B) {
	srv := benchServer(b)
	ctx := context.Background()
	url := srv.NewDatabase(b)
	a, w := open(b, Options{URL: url, CacheBytes: 1 << 20}), open(b, Options{URL: url})
	deadline := time.Now().Add(10 * time.Second)
	for !a.cache.live.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if _, err := bump(ctx, w, "Patient", "x", `{}`); err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		for a.cache.len() == 0 { // cached (a notification may still drop it)
			if _, err := a.Read(ctx, "Patient", "x"); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := bump(ctx, w, "Patient", "x", `{}`); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		for a.cache.len() != 0 {
			if time.Since(t0) > 10*time.Second {
				b.Fatal("never invalidated")
			}
			runtime.Gosched()
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}

// BenchmarkIngest writes the 473 resources of patient 355's Bundle in one
// transaction per op: Put by Put on both stores, and on PostgreSQL the bulk
// path (Loader.PutAll) writing rows with INSERT … SELECT unnest(…) in one
// batch, or with COPY.
func BenchmarkIngest(b *testing.B) {
	srv := benchServer(b)
	// The Bundle of patient 355: its Patient, then its 472 other entries.
	rs := generate(b, 1)
	i := slices.IndexFunc(rs, func(r prepared) bool { return r.typ == "Patient" && r.id == "355-c0" })
	if i < 0 || i+473 > len(rs) {
		b.Fatal("no Bundle of patient 355")
	}
	bundle := rs[i : i+473]
	ctx := context.Background()
	type variant struct {
		name string
		s    store.Store
		bulk bool
	}
	var vs []variant
	for _, ns := range benchStores(b, srv, false) {
		vs = append(vs, variant{ns.name + "/put", ns.s, false})
	}
	for _, insert := range []bool{true, false} {
		s := open(b, Options{URL: srv.NewDatabase(b)})
		s.bulkInsert = insert
		vs = append(vs, variant{map[bool]string{true: "postgres/putall-insert", false: "postgres/putall-copy"}[insert], s, true})
	}
	for _, v := range vs {
		n := 0 // copies written: b.N runs add more
		b.Run(v.name, func(b *testing.B) {
			b.ReportAllocs()
			server := namedStore{s: v.s}.serverCPU(b)
			cpu0 := cpuTime()
			b.ResetTimer()
			for range b.N {
				n++
				versions := make([]*store.Version, len(bundle))
				idx := make([]*search.Entries, len(bundle))
				for j, r := range bundle {
					versions[j] = &store.Version{Type: r.typ, ID: fmt.Sprintf("%s-%d", r.id, n), Version: 1, Updated: time.Now(), Method: "POST", Body: r.body}
					idx[j] = r.idx
				}
				err := v.s.Update(ctx, func(tx store.Tx) error {
					if v.bulk {
						return tx.(Loader).PutAll(ctx, versions, idx)
					}
					for j, ver := range versions {
						if err := tx.Put(ctx, ver, idx[j]); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			total := float64(b.N * len(bundle))
			b.ReportMetric(total/b.Elapsed().Seconds(), "resources/s")
			reportCPU(b, cpu0, server, total, "resource")
		})
	}
}

// benchCopies is how many copies of the Synthea data the search benchmark
// loads: 40 × 751 = 30,040 resources, 120 patients.
const benchCopies = 40

// BenchmarkSearch runs patient-scoped searches, each for a random patient
// of 30,040 generated resources, and fetches the page (and its includes),
// as the REST API does; it reports the latency percentiles.
func BenchmarkSearch(b *testing.B) {
	srv := benchServer(b)
	rs := generate(b, benchCopies)
	ctx := context.Background()
	stores := benchStores(b, srv, false)
	for _, ns := range stores {
		start := time.Now()
		if pg, ok := ns.s.(*Store); ok {
			for i := 0; i < len(rs); i += 751 {
				part := rs[i:min(len(rs), i+751)]
				vs := make([]*store.Version, len(part))
				idx := make([]*search.Entries, len(part))
				for j, r := range part {
					vs[j] = &store.Version{Type: r.typ, ID: r.id, Version: 1, Updated: time.Now(), Method: "PUT", Body: r.body}
					idx[j] = r.idx
				}
				if err := pg.Load(ctx, vs, idx); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := pg.pool.Exec(ctx, `ANALYZE`); err != nil {
				b.Fatal(err)
			}
		} else {
			load(b, ns.s, rs, 751)
		}
		b.Logf("%s: loaded %d resources in %s", ns.name, len(rs), time.Since(start).Round(time.Millisecond))
	}
	patients := []string{"85", "355", "888"}
	encounter, _ := search.Lookup("Condition", "encounter")
	for _, c := range []struct {
		name, typ, params string
		compartment       bool
		include           *search.Include
	}{
		{"observation-code", "Observation", "patient=%s&code=" + url.QueryEscape("http://loinc.org|72166-2"), false, nil},
		{"encounter-date-sort", "Encounter", "patient=%s&date=ge2015-01-01&_sort=-date", false, nil},
		{"condition-include", "Condition", "patient=%s", false, &search.Include{Source: "Condition", Param: encounter}},
		{"compartment-observations", "Observation", "", true, nil},
	} {
		for _, ns := range stores {
			b.Run(c.name+"/"+ns.name, func(b *testing.B) {
				var lat []time.Duration
				found := 0
				b.ReportAllocs()
				server := ns.serverCPU(b)
				cpu0 := cpuTime()
				b.ResetTimer()
				for range b.N {
					patient := fmt.Sprintf("%s-c%d", patients[rand.IntN(len(patients))], rand.IntN(benchCopies))
					v, _ := url.ParseQuery(strings.ReplaceAll(c.params, "%s", patient))
					t0 := time.Now()
					q, err := search.Parse(c.typ, v, search.Options{})
					if err != nil {
						b.Fatal(err)
					}
					if c.compartment {
						q.Compartment = patient
					}
					ms, err := ns.s.Search(ctx, q, 0, q.Count)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := ns.s.Count(ctx, q); err != nil {
						b.Fatal(err)
					}
					page, err := ns.s.Fetch(ctx, ms)
					if err != nil {
						b.Fatal(err)
					}
					if c.include != nil {
						if _, err := ns.s.Include(ctx, page, *c.include); err != nil {
							b.Fatal(err)
						}
					}
					lat = append(lat, time.Since(t0))
					found += len(page)
				}
				b.StopTimer()
				reportCPU(b, cpu0, server, float64(b.N), "op")
				b.ReportMetric(float64(found)/float64(b.N), "found/op")
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			})
		}
	}
}

// BenchmarkLayout decides the body's column: the client's bytes in a
// bytea column (the store's layout), against the same plus a jsonb copy
// (which would let SQL look inside resources). Put inserts history rows of
// the Synthea resources, one per transaction, without waiting for the
// commit's flush (synchronous_commit off: what is measured is the row, not
// the disk); Read reads a body back by key. bytes/row is the table's size
// (with its TOAST and indexes) per row.
func BenchmarkLayout(b *testing.B) {
	srv := benchServer(b)
	rs := generate(b, 1)
	ctx := context.Background()
	for _, layout := range []string{"bytea", "bytea+jsonb"} {
		conn, err := pgx.Connect(ctx, srv.NewDatabase(b))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close(ctx)
		ddl := `CREATE TABLE h (seq bigint PRIMARY KEY, rid bigint NOT NULL, type text NOT NULL, version bigint NOT NULL,
			updated bigint NOT NULL, deleted boolean NOT NULL, method text NOT NULL, body bytea`
		ins := `INSERT INTO h VALUES ($1, $2, $3, 1, $4, false, 'PUT', $5)`
		if layout == "bytea+jsonb" {
			ddl += `, doc jsonb`
			ins = `INSERT INTO h VALUES ($1, $2, $3, 1, $4, false, 'PUT', $5, $6)`
		}
		if _, err := conn.Exec(ctx, ddl+`)`); err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `SET synchronous_commit = off`); err != nil {
			b.Fatal(err)
		}
		seq := int64(0)
		server := func() func() time.Duration { return procCPU([]int32{int32(conn.PgConn().PID())}) }
		b.Run(layout+"/put", func(b *testing.B) {
			b.ReportAllocs()
			srv := server()
			for i := range b.N {
				r := rs[i%len(rs)]
				seq++
				args := []any{seq, seq, r.typ, time.Now().UnixMicro(), r.body}
				if layout == "bytea+jsonb" {
					args = append(args, r.body)
				}
				if _, err := conn.Exec(ctx, ins, args...); err != nil {
					b.Fatal(err)
				}
			}
			var size int64
			if err := conn.QueryRow(ctx, `SELECT pg_total_relation_size('h')`).Scan(&size); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(size)/float64(seq), "bytes/row")
			b.ReportMetric(float64(srv().Microseconds())/float64(b.N), "server-cpu-µs/op")
		})
		b.Run(layout+"/read", func(b *testing.B) {
			b.ReportAllocs()
			srv := server()
			var body []byte
			for i := range b.N {
				if err := conn.QueryRow(ctx, `SELECT body FROM h WHERE seq = $1`, int64(i)%seq+1).Scan(&body); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(srv().Microseconds())/float64(b.N), "server-cpu-µs/op")
		})
	}
}
