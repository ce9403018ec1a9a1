package fhir

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store/sqlite"
)

// TestBackupWhileServing copies the store through the admin endpoint and
// finds every written resource in the copy.
func TestBackupWhileServing(t *testing.T) {
	skipOnPostgres(t, "Backup copies the SQLite file (PostgreSQL is backed up with pg_dump)")
	dir := t.TempDir()
	srv := newGateway(t, `
log: {access_log: false}
fhir:
  store: {path: `+filepath.Join(dir, "omnigate.db")+`, backup_dir: `+filepath.Join(dir, "backups")+`}
routes:
  - name: fhir
    fhir: true
`)
	for _, id := range []string{"a", "b", "c"} {
		req := httptest.NewRequest("PUT", "/fhir/R4/Patient/"+id, strings.NewReader(`{"resourceType":"Patient","id":"`+id+`"}`))
		req.Header.Set("Content-Type", "application/fhir+json")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code/100 != 2 {
			t.Fatalf("PUT %s: %d %s", id, rec.Code, rec.Body)
		}
	}
	rec := httptest.NewRecorder()
	srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("POST", "/admin/fhir/backup", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("backup: %d %s", rec.Code, rec.Body)
	}
	var out struct {
		Path  string
		Bytes int64
	}
	json.Unmarshal(rec.Body.Bytes(), &out)
	if !strings.HasPrefix(out.Path, filepath.Join(dir, "backups")) || out.Bytes == 0 {
		t.Fatalf("backup answer %s", rec.Body)
	}
	if st, err := os.Stat(out.Path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("backup file mode %v, want 0600 (it holds patient data)", st.Mode())
	}
	copyStore, err := sqlite.Open(context.Background(), out.Path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer copyStore.Close()
	for _, id := range []string{"a", "b", "c"} {
		if _, err := copyStore.Read(context.Background(), "Patient", id); err != nil {
			t.Errorf("Patient/%s not in the backup: %v", id, err)
		}
	}
	// The store kept serving.
	rec = httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/fhir/R4/Patient/a", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("read after backup: %d", rec.Code)
	}
}

// TestConcurrentBackups runs backups at once, into the default folder:
// each writes a complete file of its own.
func TestConcurrentBackups(t *testing.T) {
	skipOnPostgres(t, "Backup copies the SQLite file (PostgreSQL is backed up with pg_dump)")
	dir := t.TempDir()
	t.Chdir(dir) // the default backup folder is relative
	srv := newGateway(t, `
log: {access_log: false}
fhir:
  store: {path: `+filepath.Join(dir, "omnigate.db")+`}
routes:
  - name: fhir
    fhir: true
`)
	req := httptest.NewRequest("PUT", "/fhir/R4/Patient/a", strings.NewReader(`{"resourceType":"Patient","id":"a"}`))
	req.Header.Set("Content-Type", "application/fhir+json")
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, req)
	if rec.Code/100 != 2 {
		t.Fatalf("PUT: %d %s", rec.Code, rec.Body)
	}
	const n = 4
	paths := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := httptest.NewRecorder()
			srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("POST", "/admin/fhir/backup", nil))
			if rec.Code != http.StatusOK {
				t.Errorf("backup %d: %d %s", i, rec.Code, rec.Body)
				return
			}
			var out struct{ Path string }
			json.Unmarshal(rec.Body.Bytes(), &out)
			paths[i] = out.Path
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, p := range paths {
		if p == "" {
			continue
		}
		if seen[p] {
			t.Fatalf("two backups wrote %s", p)
		}
		seen[p] = true
		copyStore, err := sqlite.Open(context.Background(), p, sqlite.Options{})
		if err != nil {
			t.Fatalf("open %s: %v", p, err)
		}
		if _, err := copyStore.Read(context.Background(), "Patient", "a"); err != nil {
			t.Errorf("Patient/a not in %s: %v", p, err)
		}
		copyStore.Close()
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "data", "backups", "*.db")); len(files) != n || len(seen) != n {
		t.Errorf("%d backup files, %d answered, want %d", len(files), len(seen), n)
	}
}
