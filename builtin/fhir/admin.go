package fhir

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/omnigate/omnigate/builtin/fhir/internal/store"
	"github.com/omnigate/omnigate/gateway"
)

// mountStats adds, for a store that can describe itself, the admin
// endpoint GET /admin/fhir/stats and the "fhir-store" component of /ping.
func mountStats(env *gateway.Env, st any, cfg *Config) {
	s, ok := st.(store.Statser)
	if !ok {
		return
	}
	dir := cfg.Store.BackupDir
	if dir == "" {
		dir = defaultBackupDir
	}
	path, what := cfg.Store.Path, "sqlite "+cfg.Store.Path
	if cfg.Store.Driver == "postgres" {
		path, what = "", "postgres "+cfg.Store.Describe()
	}
	env.HandleAdmin(http.MethodGet, "/admin/fhir/stats", statsHandler(s, path, dir))
	env.AddHealth("fhir-store", storeHealth(s, what, time.Now))
}

// StoreStats is the body of GET /admin/fhir/stats.
type StoreStats struct {
	Backend string `json:"backend"`
	Path    string `json:"path,omitempty"`
	// Resources counts the live resources; ByType by resource type.
	Resources int            `json:"resources"`
	ByType    map[string]int `json:"by_type"`
	// Versions counts the versions written (history).
	Versions int64 `json:"versions"`
	// Bytes is the size of the store (SQLite: the database and its
	// write-ahead log).
	Bytes int64 `json:"bytes"`
	// BackupDir is where POST /admin/fhir/backup writes; Backups counts
	// the backups in it and LastBackup is the newest.
	BackupDir  string      `json:"backup_dir"`
	Backups    int         `json:"backups"`
	LastBackup *BackupInfo `json:"last_backup,omitempty"`
}

// BackupInfo is one backup file.
type BackupInfo struct {
	Path  string    `json:"path"`
	Time  time.Time `json:"time"`
	Bytes int64     `json:"bytes"`
}

// statsHandler answers GET /admin/fhir/stats: the resources by type, the
// versions, the size of the store and the backups in dir.
func statsHandler(s store.Statser, path, dir string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, err := s.Stats(r.Context())
		if err != nil {
			gateway.Error(w, r, http.StatusServiceUnavailable, err.Error())
			return
		}
		out := StoreStats{Backend: st.Backend, Path: path, ByType: st.ByType, Versions: st.Versions, Bytes: st.Bytes, BackupDir: dir}
		for _, n := range st.ByType {
			out.Resources += n
		}
		if out.Backups, out.LastBackup, err = backups(dir); err != nil {
			gateway.Error(w, r, http.StatusInternalServerError, err.Error())
			return
		}
		gateway.WriteJSON(w, http.StatusOK, out)
	})
}

// backups counts the backup files in dir (as newBackupFile names them)
// and returns the newest, by modification time; a missing dir has none.
func backups(dir string) (int, *BackupInfo, error) {
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("backup folder: %w", err)
	}
	n := 0
	var last *BackupInfo
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || !strings.HasPrefix(name, "omnigate-") || !strings.HasSuffix(name, ".db") {
			continue
		}
		fi, err := e.Info()
		if err != nil || fi.Size() == 0 {
			continue // removed meanwhile, or a backup being written
		}
		n++
		if last == nil || fi.ModTime().After(last.Time) {
			last = &BackupInfo{Path: filepath.Join(dir, name), Time: fi.ModTime().UTC(), Bytes: fi.Size()}
		}
	}
	return n, last, nil
}

// storeHealth is the fhir-store component of /ping and /readyz: required
// (FHIR routes cannot answer without the store), down while its Check
// fails. A result is reused for a second, so that frequent health checks
// do not load a database server.
func storeHealth(s store.Statser, what string, now func() time.Time) func() gateway.Health {
	var (
		mu   sync.Mutex
		last gateway.Health
		at   time.Time
	)
	return func() gateway.Health {
		mu.Lock()
		defer mu.Unlock()
		if t := now(); !at.IsZero() && t.Sub(at) < time.Second && !t.Before(at) {
			return last
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := s.Check(ctx)
		cancel()
		last = gateway.Health{Status: gateway.StatusUp, Required: true, Detail: what}
		if err != nil {
			last.Status, last.Detail = gateway.StatusDown, what+": "+err.Error()
		}
		at = now()
		return last
	}
}
