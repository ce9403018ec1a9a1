//go:build sqlitecompare

// The benchmark that chose the SQLite driver. It needs the second driver,
// which the store does not import:
//
//	go test -tags sqlitecompare -run XXX -bench Driver -benchmem ./builtin/fhir/internal/store/sqlite/

package sqlite_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite" // registers "sqlite"

	"github.com/omnigate/omnigate/builtin/fhir/internal/search"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/builtin/fhir/internal/store/sqlite"
)

type prepared struct {
	typ, id string
	body    []byte
	idx     *search.Entries
}

// synthea returns the resources of the patient 355 Bundle with their index
// entries, references pointing at Patient/355.
func synthea(b *testing.B) []prepared {
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "testdata", "synthea", "uscore_bundle_patient_355.json"))
	if err != nil {
		b.Skip(err)
	}
	var bundle struct {
		Entry []struct {
			FullURL  string          `json:"fullUrl"`
			Resource json.RawMessage `json:"resource"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(data, &bundle); err != nil {
		b.Fatal(err)
	}
	patientURL := bundle.Entry[0].FullURL
	var out []prepared
	for i, e := range bundle.Entry {
		raw := bytes.ReplaceAll(e.Resource, []byte(patientURL), []byte("Patient/355"))
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber()
		var tree map[string]any
		if err := d.Decode(&tree); err != nil {
			b.Fatal(err)
		}
		typ := tree["resourceType"].(string)
		id := fmt.Sprintf("r%d", i)
		out = append(out, prepared{typ, id, raw, search.Index(typ, id, tree)})
	}
	return out
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkDriver(b *testing.B) {
	res := synthea(b)
	ctx := context.Background()
	for _, drv := range []string{"sqlite", "sqlite3"} {
		name := map[string]string{"sqlite": "modernc", "sqlite3": "ncruces"}[drv]
		b.Run(name+"/ingest", func(b *testing.B) {
			s, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "d.db"), sqlite.Options{Driver: drv})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := 0; i < b.N; i++ {
				err := s.Update(ctx, func(tx store.Tx) error {
					for _, r := range res {
						v := &store.Version{Type: r.typ, ID: fmt.Sprintf("%s-%d", r.id, i), Version: 1, Updated: time.Now(), Method: "POST", Body: r.body}
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
			n := float64(b.N * len(res))
			b.ReportMetric(n/b.Elapsed().Seconds(), "resources/s")
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/n, "cpu-µs/resource")
		})
		b.Run(name+"/read-search", func(b *testing.B) {
			s, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "d.db"), sqlite.Options{Driver: drv})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			err = s.Update(ctx, func(tx store.Tx) error {
				for _, r := range res {
					if err := tx.Put(ctx, &store.Version{Type: r.typ, ID: r.id, Version: 1, Updated: time.Now(), Method: "POST", Body: r.body}, r.idx); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			q, err := search.Parse("Observation", url.Values{"patient": {"355"}, "code": {"http://loinc.org|72166-2"}}, search.Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := 0; i < b.N; i++ {
				if _, err := s.Read(ctx, "Observation", res[i%len(res)].id); err != nil && res[i%len(res)].typ == "Observation" {
					b.Fatal(err)
				}
				ms, err := s.Search(ctx, q, 0, 100)
				if err != nil || len(ms) == 0 {
					b.Fatal(err, len(ms))
				}
				if _, err := s.Fetch(ctx, ms); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}
