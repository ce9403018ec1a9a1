package fhir

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
)

// GET /admin/fhir/stats counts the live resources by type and the
// versions, sizes the store, and finds the backups; /ping has the store.
func TestAdminStats(t *testing.T) {
	dir := t.TempDir()
	srv := newGateway(t, `
log: {access_log: false}
fhir:
  store: {path: `+filepath.Join(dir, "omnigate.db")+`, backup_dir: `+filepath.Join(dir, "backups")+`}
routes:
  - name: fhir
    fhir: true
`)
	write := func(method, path, body string) {
		t.Helper()
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/fhir+json")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code/100 != 2 {
			t.Fatalf("%s %s: %d %s", method, path, rec.Code, rec.Body)
		}
	}
	for _, id := range []string{"a", "b", "c"} {
		write("PUT", "/fhir/R4/Patient/"+id, `{"resourceType":"Patient","id":"`+id+`"}`)
	}
	write("PUT", "/fhir/R4/Patient/a", `{"resourceType":"Patient","id":"a","gender":"female"}`)
	write("DELETE", "/fhir/R4/Patient/c", "")
	write("POST", "/fhir/R4/Observation", `{"resourceType":"Observation","status":"final","code":{"text":"x"}}`)
	admin := srv.AdminHandler()
	stats := func() StoreStats {
		t.Helper()
		rec := httptest.NewRecorder()
		admin.ServeHTTP(rec, httptest.NewRequest("GET", "/admin/fhir/stats", nil))
		var st StoreStats
		if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil || rec.Code != 200 {
			t.Fatalf("stats: %d %s", rec.Code, rec.Body)
		}
		return st
	}
	st := stats()
	if onPostgres() {
		// The same counts from the database; backups are pg_dump's.
		if st.Backend != "postgres" || st.Resources != 3 || st.ByType["Patient"] != 2 || st.ByType["Observation"] != 1 ||
			st.Versions != 6 || st.Bytes < 4096 {
			t.Errorf("stats: %+v", st)
		}
		return
	}
	// Six versions: three creates, an update, a delete, a create.
	if st.Backend != "sqlite" || st.Resources != 3 || st.ByType["Patient"] != 2 || st.ByType["Observation"] != 1 ||
		len(st.ByType) != 2 || st.Versions != 6 || st.Bytes < 4096 || st.Backups != 0 || st.LastBackup != nil ||
		st.BackupDir != filepath.Join(dir, "backups") || st.Path != filepath.Join(dir, "omnigate.db") {
		t.Errorf("stats: %+v", st)
	}

	rec := httptest.NewRecorder()
	admin.ServeHTTP(rec, httptest.NewRequest("POST", "/admin/fhir/backup", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("backup: %d %s", rec.Code, rec.Body)
	}
	var b struct {
		Path  string
		Bytes int64
	}
	json.Unmarshal(rec.Body.Bytes(), &b)
	st = stats()
	if st.Backups != 1 || st.LastBackup == nil || st.LastBackup.Path != b.Path || st.LastBackup.Bytes != b.Bytes || st.LastBackup.Time.IsZero() {
		t.Errorf("after a backup: %+v (backup %+v)", st, b)
	}

	rec = httptest.NewRecorder()
	admin.ServeHTTP(rec, httptest.NewRequest("GET", "/ping", nil))
	var ping struct {
		Components map[string]struct{ Status, Detail string }
	}
	json.Unmarshal(rec.Body.Bytes(), &ping)
	if c := ping.Components["fhir-store"]; c.Status != "up" || !strings.Contains(c.Detail, "omnigate.db") {
		t.Errorf("ping: %s", rec.Body)
	}
}

func TestBackupsFolder(t *testing.T) {
	n, last, err := backups(filepath.Join(t.TempDir(), "missing"))
	if n != 0 || last != nil || err != nil {
		t.Errorf("a missing folder: %d %v %v", n, last, err)
	}
}
