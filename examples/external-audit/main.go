// Command external-audit is an external policy plugin that writes one audit
// record per request to a file: a JSON line shaped as a FHIR R4 AuditEvent
// saying who (user, role, client address) did what (the FHIR interaction,
// resource type and id) when, and with what outcome (the status).
//
// It records ids only: no query strings, no bodies, no names, so the audit
// file holds no PHI beyond resource and patient ids. It takes part in the
// response phase only, without the body, so it costs one call per request
// and never buffers responses. A record that cannot be written fails the
// request by the plugin's failure mode ("fail: closed" by default: no
// audit, no access).
//
// Build it with "go build -o bin/external-audit ./examples/external-audit".
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/omnigate/omnigate/sdk/external"
)

// audit is the policy. Its config is the plugin's "config" key.
type audit struct {
	external.ResponseOnly
	// File receives the records, appended. Required.
	File string `json:"file"`
	// Observer names this gateway in the records. Default "omnigate".
	Observer string `json:"observer"`

	mu  sync.Mutex
	f   *os.File
	now func() time.Time
}

func (a *audit) Configure(ctx context.Context, c external.Config) error {
	a.Observer = "omnigate"
	if err := c.Decode(a); err != nil {
		return err
	}
	if a.File == "" {
		return errors.New("config: file is required")
	}
	f, err := os.OpenFile(a.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("config: open audit file: %w", err)
	}
	a.f, a.now = f, time.Now
	return nil
}

func (a *audit) OnResponse(ctx context.Context, r *external.Response) error {
	line, err := json.Marshal(a.record(r))
	if err != nil {
		return fmt.Errorf("encode audit record: %w", err)
	}
	line = append(line, '\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.f.Write(line); err != nil { // one write: whole lines
		return fmt.Errorf("write audit record: %w", err)
	}
	r.Count("records", 1)
	return nil
}

func main() { external.Serve(&audit{}) }

// AuditEvent is the part of a FHIR R4 AuditEvent the plugin fills in.
type AuditEvent struct {
	ResourceType string   `json:"resourceType"`
	ID           string   `json:"id,omitempty"`
	Type         Coding   `json:"type"`
	Subtype      []Coding `json:"subtype,omitempty"`
	Action       string   `json:"action"`
	Recorded     string   `json:"recorded"`
	Outcome      string   `json:"outcome"`
	OutcomeDesc  string   `json:"outcomeDesc"`
	Agent        []Agent  `json:"agent"`
	Source       Source   `json:"source"`
	Entity       []Entity `json:"entity,omitempty"`
}

// Coding is a FHIR Coding.
type Coding struct {
	System  string `json:"system,omitempty"`
	Code    string `json:"code"`
	Display string `json:"display,omitempty"`
}

// Reference is a FHIR Reference.
type Reference struct {
	Reference  string      `json:"reference,omitempty"`
	Identifier *Identifier `json:"identifier,omitempty"`
	Display    string      `json:"display,omitempty"`
}

// Identifier is a FHIR Identifier.
type Identifier struct {
	Value string `json:"value"`
}

// Agent is AuditEvent.agent.
type Agent struct {
	Role      []Text    `json:"role,omitempty"`
	Who       Reference `json:"who"`
	Requestor bool      `json:"requestor"`
	Network   *Network  `json:"network,omitempty"`
}

// Text is a CodeableConcept with text only.
type Text struct {
	Text string `json:"text"`
}

// Network is AuditEvent.agent.network.
type Network struct {
	Address string `json:"address"`
	Type    string `json:"type"`
}

// Source is AuditEvent.source.
type Source struct {
	Site     string    `json:"site,omitempty"`
	Observer Reference `json:"observer"`
}

// Entity is AuditEvent.entity.
type Entity struct {
	What Reference `json:"what"`
}

// record describes the exchange, from ids only.
func (a *audit) record(r *external.Response) AuditEvent {
	req := r.Request
	ev := AuditEvent{
		ResourceType: "AuditEvent",
		ID:           req.ID,
		Type:         Coding{System: "http://terminology.hl7.org/CodeSystem/audit-event-type", Code: "rest", Display: "RESTful Operation"},
		Action:       actionOf(req),
		Recorded:     a.now().UTC().Format(time.RFC3339Nano),
		Outcome:      outcomeOf(r.Status),
		OutcomeDesc:  "HTTP " + strconv.Itoa(r.Status),
		Source:       Source{Site: req.Route, Observer: Reference{Display: a.Observer}},
	}
	who := Agent{Who: Reference{Display: "anonymous"}, Requestor: true}
	if id := req.Identity; id != nil {
		who.Who = Reference{Identifier: &Identifier{Value: id.User}}
		if id.Role != "" {
			who.Role = []Text{{Text: id.Role}}
		}
	}
	if req.ClientIP != "" {
		who.Network = &Network{Address: req.ClientIP, Type: "2"} // 2: IP address
	}
	ev.Agent = []Agent{who}
	if f := req.FHIR; f != nil {
		ev.Subtype = []Coding{{System: "http://hl7.org/fhir/restful-interaction", Code: f.Interaction}}
		if f.CompartmentType != "" {
			ev.Entity = append(ev.Entity, Entity{What: Reference{Reference: f.CompartmentType + "/" + f.CompartmentID}})
		}
		switch {
		case f.Type != "" && f.ID != "":
			ev.Entity = append(ev.Entity, Entity{What: Reference{Reference: f.Type + "/" + f.ID}})
		case f.Type != "":
			ev.Entity = append(ev.Entity, Entity{What: Reference{Display: f.Type}})
		}
	}
	return ev
}

// actionOf is the AuditEvent action: C, R, U, D or E.
func actionOf(r *external.Request) string {
	if f := r.FHIR; f != nil {
		switch f.Interaction {
		case "create":
			return "C"
		case "update", "patch":
			return "U"
		case "delete":
			return "D"
		case "batch", "operation":
			return "E"
		}
		return "R"
	}
	switch r.Method {
	case "POST":
		return "C"
	case "PUT", "PATCH":
		return "U"
	case "DELETE":
		return "D"
	}
	return "R"
}

// outcomeOf is the AuditEvent outcome: 0 success, 4 minor failure (the
// client's), 8 serious failure (the server's).
func outcomeOf(status int) string {
	switch {
	case status >= 500:
		return "8"
	case status >= 400:
		return "4"
	}
	return "0"
}
