package scaletest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/omnigate/omnigate/internal/pgproc"
)

// pgStore is the PostgreSQL database of a Store "postgres" fleet: a
// private server the tool started (stopped and restarted under load), or
// the database of Options.StoreURL (left alone).
type pgStore struct {
	srv *pgproc.Server // nil with Options.StoreURL
	url string
}

// startStore starts a private PostgreSQL and creates the fleet's
// database, or takes Options.StoreURL.
func startStore(ctx context.Context, o *Options) (*pgStore, error) {
	if o.StoreURL != "" {
		return &pgStore{url: o.StoreURL}, nil
	}
	// max_connections: every instance's pool (4 per CPU, at least 8),
	// the seeding process's and room for a restart's reconnections.
	srv, err := pgproc.New(ctx, "-c", fmt.Sprintf("max_connections=%d", 100+20*o.Instances))
	if err != nil {
		return nil, err
	}
	db, err := srv.CreateDatabase(ctx)
	if err != nil {
		srv.Close()
		return nil, err
	}
	return &pgStore{srv: srv, url: srv.URL(db)}, nil
}

func (s *pgStore) close() {
	if s.srv != nil {
		s.srv.Close()
	}
}

// describe says what runs, for the report, without a password.
func (s *pgStore) describe() string {
	if s.srv == nil {
		return "PostgreSQL at " + redactedURL(s.url) + " (given; not restarted)"
	}
	return fmt.Sprintf("PostgreSQL 15 started by the tool on 127.0.0.1:%d (fsync off: acknowledged commits reach the operating system)", s.srv.Port())
}

// redactedURL is a connection URL without its password.
func redactedURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.Scheme != "" {
		return u.Redacted()
	}
	return "(a connection string)"
}

// pid is the postmaster's (0 while stopped or not started by the tool).
func (s *pgStore) pid() int {
	if s.srv == nil {
		return 0
	}
	return s.srv.PID()
}

// storeStaleBound is how long after a write on one instance a read by id
// on another may still return the previous version while the database
// and Redis are up (docs/SCALING.md): the response cache's invalidation
// arrives in milliseconds; the bound leaves room for a loaded machine.
const storeStaleBound = time.Second

// storeLog is when the store was stopped and started again.
type storeLog struct {
	mu                 sync.Mutex
	stopped, restarted bool
	stopAt, restartAt  time.Duration // when the stop began, when the start began
	readyAt            time.Duration // when the server accepted connections again
	err                error
}

// restartStore stops the private server at StoreStopAt (immediate mode:
// connections cut, no checkpoint) and starts it at StoreRestartAt. The
// start happens even when the load has ended before.
func restartStore(ctx, load context.Context, o *Options, s *pgStore, sl *storeLog, start time.Time, logf func(string, ...any)) {
	if o.NoStoreRestart || s.srv == nil {
		return
	}
	if !sleepUntil(load, start.Add(o.StoreStopAt)) {
		return
	}
	sl.mu.Lock()
	sl.stopped, sl.stopAt = true, time.Since(start)
	sl.mu.Unlock()
	logf("\nstore: stopping PostgreSQL at %s", ms(sl.stopAt))
	s.srv.Stop()
	sleepUntil(load, start.Add(o.StoreRestartAt))
	at := time.Since(start)
	logf("store: starting PostgreSQL at %s", ms(at))
	err := s.srv.Start(ctx)
	sl.mu.Lock()
	defer sl.mu.Unlock()
	sl.restarted, sl.restartAt, sl.readyAt, sl.err = true, at, time.Since(start), err
}

// ack is a write the fleet acknowledged: this version of the resource
// must be in the store at the end.
type ack struct {
	typ, id, version string
	at               time.Duration // when the answer came, since the load began
	inst             int
}

// ackBook collects acknowledged writes.
type ackBook struct {
	mu   sync.Mutex
	acks []ack
	bad  int // acknowledged writes whose answer named no version
}

// add records the answer to a write (status 200 or 201) made on inst.
func (b *ackBook) add(res result, inst int, start time.Time) {
	typ, id, version, ok := parseAck(res.body, res.header.Get("Location"))
	b.mu.Lock()
	defer b.mu.Unlock()
	if !ok {
		b.bad++
		return
	}
	b.acks = append(b.acks, ack{typ: typ, id: id, version: version, at: res.start.Add(res.dur).Sub(start), inst: inst})
}

// parseAck reads the type, id and version of a written resource from the
// answer's body (resourceType, id, meta.versionId) or, for an answer
// without one, from its Location ([base/]Type/id/_history/version).
func parseAck(body []byte, location string) (typ, id, version string, ok bool) {
	var r struct {
		ResourceType string `json:"resourceType"`
		ID           string `json:"id"`
		Meta         struct {
			VersionID string `json:"versionId"`
		} `json:"meta"`
	}
	if json.Unmarshal(body, &r) == nil && r.ResourceType != "" && r.ID != "" && r.Meta.VersionID != "" {
		return r.ResourceType, r.ID, r.Meta.VersionID, validRef(r.ResourceType, r.ID, r.Meta.VersionID)
	}
	parts := strings.Split(location, "/")
	if n := len(parts); n >= 4 && parts[n-2] == "_history" {
		typ, id, version = parts[n-4], parts[n-3], parts[n-1]
		return typ, id, version, validRef(typ, id, version)
	}
	return "", "", "", false
}

// validRef accepts what can go back into a URL path as it is: FHIR ids
// and version ids are [A-Za-z0-9\-.]{1,64} (but not the dot segments "."
// and ".."), type names letters and digits.
func validRef(typ, id, version string) bool {
	ok := func(s string, extra string) bool {
		if s == "" || len(s) > 64 || s == "." || s == ".." {
			return false
		}
		for _, c := range s {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.ContainsRune(extra, c)) {
				return false
			}
		}
		return true
	}
	return ok(typ, "") && ok(id, "-.") && ok(version, "-.")
}

// WriteCheck is the acknowledged-write check: every write the fleet
// acknowledged (simulated users' and probes') read back by version after
// the run.
type WriteCheck struct {
	Acknowledged int `json:"acknowledged"`
	// NoVersion counts acknowledgements that named no version (not
	// checkable; must be 0).
	NoVersion int `json:"no_version"`
	Checked   int `json:"checked"`
	Missing   int `json:"missing"`
	// BeforeStoreStop were acknowledged in the 2 s before the store was
	// stopped; DuringStoreOutage between the stop and every instance
	// being back on the store (by instances whose pool had reconnected
	// while others' had not yet).
	BeforeStoreStop   int      `json:"before_store_stop"`
	DuringStoreOutage int      `json:"during_store_outage"`
	Problems          []string `json:"problems,omitempty"`
}

// loginAnywhere logs u in on the first instance that lets it.
func loginAnywhere(ctx context.Context, c *client, u *user) (token, error) {
	var err error
	for i := range c.insts {
		var tok token
		if tok, err = c.login(ctx, i, u); err == nil {
			return tok, nil
		}
	}
	return token{}, err
}

// verifyWrites reads every acknowledged version back (vread) with tok,
// spread over the instances, 8 at a time.
func verifyWrites(ctx context.Context, c *client, tok token, base string, b *ackBook) WriteCheck {
	b.mu.Lock()
	acks := append([]ack(nil), b.acks...)
	wc := WriteCheck{Acknowledged: len(b.acks) + b.bad, NoVersion: b.bad}
	b.mu.Unlock()
	var mu sync.Mutex
	next := 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if next == len(acks) {
					mu.Unlock()
					return
				}
				k := next
				next++
				mu.Unlock()
				a := acks[k]
				path := base + "/" + a.typ + "/" + a.id + "/_history/" + a.version
				res, err := c.do(ctx, k%len(c.insts), opProbe, -1, http.MethodGet, path, nil, tok)
				mu.Lock()
				wc.Checked++
				if err != nil || res.status != http.StatusOK {
					wc.Missing++
					if len(wc.Problems) < 10 {
						wc.Problems = append(wc.Problems, fmt.Sprintf("%s/%s version %s, acknowledged by instance %d at %s: status %d %v",
							a.typ, a.id, a.version, a.inst+1, ms(a.at), res.status, err))
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return wc
}
