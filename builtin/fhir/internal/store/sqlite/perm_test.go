//go:build unix

package sqlite

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestFilesCreatedOwnerOnly: the database, its -wal and -shm files, the
// lock file and backups hold patient data (or its shape) and are created
// readable by their owner only, whatever the process umask; a backup never
// exists with wider permissions, not even while it is written.
func TestFilesCreatedOwnerOnly(t *testing.T) {
	old := syscall.Umask(0o022) // the usual umask: files 0644 unless made otherwise
	defer syscall.Umask(old)
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "fhir.db")
	s, err := Open(ctx, path, Options{Sync: "normal"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	put(t, s, "Patient", "p1", 1, false, nil)
	for _, f := range []string{path, path + "-wal", path + "-shm", path + ".lock"} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatalf("%s: %v", filepath.Base(f), err)
		}
		if perm := st.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s created %o, want 600", filepath.Base(f), perm)
		}
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("store folder created %o, want 700", st.Mode().Perm())
	}
	backup := filepath.Join(t.TempDir(), "backup.db")
	if err := s.Backup(ctx, backup); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(backup); err != nil || st.Mode().Perm() != 0o600 || st.Size() == 0 {
		t.Errorf("backup: %v %v", err, st)
	}
}
