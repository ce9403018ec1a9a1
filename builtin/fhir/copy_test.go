package fhir

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/internal/pgtest"
)

// allVersions reads every version of the store sc names, in the order
// written.
func allVersions(t *testing.T, sc *StoreConfig) []*store.Version {
	t.Helper()
	st, err := openCopyStore(context.Background(), sc)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var out []*store.Version
	for after := int64(0); ; {
		vs, err := st.(store.Copier).Versions(context.Background(), after, 333)
		if err != nil {
			t.Fatal(err)
		}
		if len(vs) == 0 {
			return out
		}
		out = append(out, vs...)
		after = vs[len(vs)-1].Seq
	}
}

// sameVersions reports the first difference between two stores' versions
// (type, id, version, lastUpdated, deletion, method, body byte for byte,
// and the order they were written in).
func sameVersions(a, b []*store.Version) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d versions against %d", len(a), len(b))
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Type != y.Type || x.ID != y.ID || x.Version != y.Version || !x.Updated.Equal(y.Updated) ||
			x.Deleted != y.Deleted || x.Method != y.Method || !bytes.Equal(x.Body, y.Body) {
			return fmt.Errorf("version %d: %s/%s/_history/%d %s %v %s against %s/%s/_history/%d %s %v %s", i,
				x.Type, x.ID, x.Version, x.Updated, x.Deleted, x.Method, y.Type, y.ID, y.Version, y.Updated, y.Deleted, y.Method)
		}
	}
	return nil
}

// The example data, with updates, a patch, deletions and a re-creation,
// copied from SQLite into PostgreSQL and back: every version is the same
// in the three stores, in the same order; reads, ETags, histories and
// searches answer the same; a non-empty target is refused without Force
// and emptied with it.
func TestCopyStoreRoundTrip(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sqliteA := &StoreConfig{Driver: "sqlite", Path: filepath.Join(dir, "a.db")}
	sqliteB := &StoreConfig{Driver: "sqlite", Path: filepath.Join(dir, "b.db")}
	pg := &StoreConfig{Driver: "postgres", URL: pgtest.Start(t).NewDatabase(t), IgnoreEnv: true}

	clock := newTestClock(testEpoch)
	handler := func(sc *StoreConfig) *Handler {
		st, err := openCopyStore(ctx, sc)
		if err != nil {
			t.Fatal(err)
		}
		cfg := DefaultConfig()
		cfg.Store = *sc
		h, err := newHandler(cfg, st, Options{Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	src := handler(sqliteA)
	for _, f := range []string{"uscore_bundle_patient_355.json", "uscore_bundle_patient_85.json", "carin_bundle_patient_888.json"} {
		clock.Advance(time.Second)
		if sum, err := src.Import(ctx, bytes.NewReader(sharedExample(t, f)), nil); err != nil || sum.Failed > 0 {
			t.Fatalf("%s: %v %+v", f, err, sum)
		}
	}
	clock.Advance(time.Second)
	put(t, src, "Patient", "355", `"gender":"female","active":true`)
	clock.Advance(time.Second)
	put(t, src, "Patient", "355", `"gender":"female","active":false`)
	mustStatus(t, do(t, src, "PATCH", "/fhir/R4/Patient/85", []byte(`[{"op":"add","path":"/active","value":true}]`),
		"Content-Type", "application/json-patch+json"), http.StatusOK)
	clock.Advance(time.Second)
	mustStatus(t, do(t, src, "DELETE", "/fhir/R4/Patient/888", nil), http.StatusNoContent)
	mustStatus(t, do(t, src, "DELETE", "/fhir/R4/Patient/x-gone", nil), http.StatusNoContent)
	put(t, src, "Patient", "recreated", `"gender":"male"`)
	mustStatus(t, do(t, src, "DELETE", "/fhir/R4/Patient/recreated", nil), http.StatusNoContent)
	clock.Advance(time.Second)
	put(t, src, "Patient", "recreated", `"gender":"other"`)
	src.store.Close()

	want := allVersions(t, sqliteA)
	if len(want) != 751+7 {
		t.Fatalf("%d versions in the source, want the 751 imported and 7 more", len(want))
	}
	var progress []int64
	sum, err := CopyStore(ctx, sqliteA, pg, CopyOptions{Progress: func(done, total int64) {
		progress = append(progress, done)
		if total != int64(len(want)) {
			t.Errorf("progress total %d, want %d", total, len(want))
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Versions != int64(len(want)) || len(progress) == 0 || progress[len(progress)-1] != sum.Versions {
		t.Errorf("summary %+v, progress %v, want %d versions", sum, progress, len(want))
	}
	if err := sameVersions(want, allVersions(t, pg)); err != nil {
		t.Fatalf("SQLite to PostgreSQL: %v", err)
	}
	if _, err := CopyStore(ctx, pg, sqliteB, CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := sameVersions(want, allVersions(t, sqliteB)); err != nil {
		t.Fatalf("PostgreSQL back to SQLite: %v", err)
	}

	// The REST API answers the same from each store.
	for _, sc := range []*StoreConfig{sqliteA, pg, sqliteB} {
		h := handler(sc)
		r := do(t, h, "GET", "/fhir/R4/Patient/355", nil)
		mustStatus(t, r, http.StatusOK)
		if r.header.Get("ETag") != `W/"3"` {
			t.Errorf("%s: ETag %q", sc.Describe(), r.header.Get("ETag"))
		}
		mustStatus(t, do(t, h, "GET", "/fhir/R4/Patient/888", nil), http.StatusGone)
		hist := do(t, h, "GET", "/fhir/R4/Patient/recreated/_history", nil).json(t)
		if hist["total"] != float64(3) {
			t.Errorf("%s: history of Patient/recreated: total %v", sc.Describe(), hist["total"])
		}
		obs := do(t, h, "GET", "/fhir/R4/Observation?patient=355&_summary=count", nil).json(t)
		if n, _ := obs["total"].(float64); n < 100 {
			t.Errorf("%s: %v Observations of patient 355", sc.Describe(), obs["total"])
		}
		h.store.Close()
	}

	// A target that holds data is refused, and emptied with Force.
	if _, err := CopyStore(ctx, sqliteA, pg, CopyOptions{}); !errors.Is(err, ErrTargetNotEmpty) {
		t.Fatalf("copy into a non-empty target: %v", err)
	}
	if _, err := CopyStore(ctx, sqliteA, pg, CopyOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if err := sameVersions(want, allVersions(t, pg)); err != nil {
		t.Fatalf("forced copy: %v", err)
	}
	if _, err := CopyStore(ctx, sqliteA, sqliteA, CopyOptions{}); err == nil {
		t.Error("a copy onto its source was not refused")
	}
	if _, err := CopyStore(ctx, &StoreConfig{Driver: "sqlite", Path: filepath.Join(dir, "missing.db")}, sqliteB, CopyOptions{Force: true}); err == nil {
		t.Error("a missing source file was not refused")
	}
}
