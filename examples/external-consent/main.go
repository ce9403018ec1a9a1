// Command external-consent is an external policy plugin that allows or
// denies access to a patient's compartment by a consent list it reads from
// a file — standing in for a consent service, which a WebAssembly plugin
// could not reach.
//
// The patient a FHIR request is about is the id of a Patient read
// (Patient/123), the compartment of a compartment search
// (Patient/123/Observation), or the patient= or subject=Patient/… search
// parameter. Requests about no patient are let through. A patient may read
// their own records. Otherwise the consent list decides: rules match the
// patient and the caller (a user, a role, or "*" for anyone); a matching
// deny wins over a matching permit, and with no match the default applies
// ("deny" unless configured).
//
// The list is a JSON file:
//
//	[
//	  {"patient": "123", "actor": "user:dr-who", "decision": "permit"},
//	  {"patient": "123", "actor": "role:nurse",  "decision": "permit"},
//	  {"patient": "456", "actor": "*",           "decision": "deny"}
//	]
//
// It is read again when it changes (checked every second by default); a
// file that does not parse leaves the previous list in force.
//
// Build it with "go build -o bin/external-consent ./examples/external-consent".
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/omnigate/omnigate/sdk/external"
)

// consent is the policy. Its config is the plugin's "config" key.
type consent struct {
	// Consents is the consent list file. Required.
	Consents string `json:"consents"`
	// Default is the decision when no rule matches: "deny" or "permit".
	// Default "deny".
	Default string `json:"default"`
	// CheckInterval is how often the file is checked for changes, as a Go
	// duration. Default "1s".
	CheckInterval string `json:"check_interval"`

	rules atomic.Pointer[ruleSet]
}

// Rule is one entry of the consent list.
type Rule struct {
	Patient  string `json:"patient"`
	Actor    string `json:"actor"`
	Decision string `json:"decision"`
}

// ruleSet is a loaded list, by patient id.
type ruleSet struct {
	byPatient map[string][]Rule
	mtime     time.Time
	size      int64
}

func (c *consent) Configure(ctx context.Context, cfg external.Config) error {
	c.Default, c.CheckInterval = "deny", "1s"
	if err := cfg.Decode(c); err != nil {
		return err
	}
	if c.Consents == "" {
		return errors.New("config: consents is required")
	}
	if c.Default != "deny" && c.Default != "permit" {
		return fmt.Errorf("config: default must be deny or permit, not %q", c.Default)
	}
	every, err := time.ParseDuration(c.CheckInterval)
	if err != nil || every <= 0 {
		return fmt.Errorf("config: check_interval must be a positive duration, not %q", c.CheckInterval)
	}
	rs, err := load(c.Consents)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	c.rules.Store(rs)
	go c.watch(every)
	return nil
}

// watch reloads the list when the file's size or modification time
// changes. It runs for the life of the process.
func (c *consent) watch(every time.Duration) {
	for range time.Tick(every) {
		cur := c.rules.Load()
		st, err := os.Stat(c.Consents)
		if err != nil || st.ModTime().Equal(cur.mtime) && st.Size() == cur.size {
			continue
		}
		rs, err := load(c.Consents)
		if err != nil {
			external.Logger.Error("consent list not reloaded; the previous one stays in force", "error", err)
			continue
		}
		c.rules.Store(rs)
		external.Logger.Info("consent list reloaded", "patients", len(rs.byPatient))
	}
}

func load(file string) (*ruleSet, error) {
	st, err := os.Stat(file)
	if err != nil {
		return nil, fmt.Errorf("consent list: %w", err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("consent list: %w", err)
	}
	var rules []Rule
	if err := json.Unmarshal(b, &rules); err != nil {
		return nil, fmt.Errorf("consent list %s: %w", file, err)
	}
	rs := &ruleSet{byPatient: map[string][]Rule{}, mtime: st.ModTime(), size: st.Size()}
	for i, r := range rules {
		if r.Patient == "" || r.Actor == "" || (r.Decision != "permit" && r.Decision != "deny") {
			return nil, fmt.Errorf("consent list %s: entry %d needs a patient, an actor and a decision (permit or deny)", file, i)
		}
		rs.byPatient[r.Patient] = append(rs.byPatient[r.Patient], r)
	}
	return rs, nil
}

func (c *consent) OnRequest(ctx context.Context, r *external.Request) error {
	patient := patientOf(r)
	if patient == "" {
		return nil
	}
	if c.permits(patient, r.Identity) {
		r.Count("permitted", 1)
		return nil
	}
	r.Count("denied", 1)
	r.Deny(403, "access to this patient's records is not permitted by consent")
	return nil
}

// permits decides for the caller id on patient's compartment.
func (c *consent) permits(patient string, id *external.Identity) bool {
	if id != nil && id.Patient == patient {
		return true
	}
	decision := ""
	for _, rule := range c.rules.Load().byPatient[patient] {
		if !matches(rule.Actor, id) {
			continue
		}
		if rule.Decision == "deny" {
			return false
		}
		decision = "permit"
	}
	if decision == "" {
		decision = c.Default
	}
	return decision == "permit"
}

func matches(actor string, id *external.Identity) bool {
	switch {
	case actor == "*":
		return true
	case id == nil:
		return false
	case strings.HasPrefix(actor, "user:"):
		return actor[len("user:"):] == id.User
	case strings.HasPrefix(actor, "role:"):
		return actor[len("role:"):] == id.Role
	}
	return false
}

// patientOf returns the patient a FHIR request is about, or "".
func patientOf(r *external.Request) string {
	f := r.FHIR
	if f == nil {
		return ""
	}
	switch {
	case f.CompartmentType == "Patient":
		return f.CompartmentID
	case f.Type == "Patient" && f.ID != "":
		return f.ID
	}
	q := r.Query()
	if p := q.Get("patient"); p != "" {
		return strings.TrimPrefix(p, "Patient/")
	}
	if s := q.Get("subject"); strings.HasPrefix(s, "Patient/") {
		return strings.TrimPrefix(s, "Patient/")
	}
	return ""
}

func main() { external.Serve(&consent{}) }
