package fhir

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store/sqlite"
)

// TestBackupWhileServing copies the store through the admin endpoint and
// finds every written resource in the copy.
func TestBackupWhileServing(t *testing.T) {
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
