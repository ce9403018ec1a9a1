package audit

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// AuditEvent (FHIR R4) as the fhir sink writes it, following the IHE Basic
// Audit Log Patterns (BALP): see docs/AUDIT.md for the mapping.

type coding struct {
	System  string `json:"system,omitempty"`
	Code    string `json:"code,omitempty"`
	Display string `json:"display,omitempty"`
}

type codeableConcept struct {
	Coding []coding `json:"coding,omitempty"`
	Text   string   `json:"text,omitempty"`
}

type identifier struct {
	System string `json:"system,omitempty"`
	Value  string `json:"value"`
}

type reference struct {
	Reference  string      `json:"reference,omitempty"`
	Identifier *identifier `json:"identifier,omitempty"`
	Display    string      `json:"display,omitempty"`
}

type network struct {
	Address string `json:"address"`
	Type    string `json:"type"`
}

type aeAgent struct {
	Type         *codeableConcept  `json:"type,omitempty"`
	Role         []codeableConcept `json:"role,omitempty"`
	Who          *reference        `json:"who,omitempty"`
	Name         string            `json:"name,omitempty"`
	Requestor    bool              `json:"requestor"`
	Policy       []string          `json:"policy,omitempty"`
	Network      *network          `json:"network,omitempty"`
	PurposeOfUse []codeableConcept `json:"purposeOfUse,omitempty"`
}

type aeSource struct {
	Site     string    `json:"site,omitempty"`
	Observer reference `json:"observer"`
	Type     []coding  `json:"type,omitempty"`
}

type aeEntity struct {
	What        *reference `json:"what,omitempty"`
	Type        *coding    `json:"type,omitempty"`
	Role        *coding    `json:"role,omitempty"`
	Description string     `json:"description,omitempty"`
	Query       string     `json:"query,omitempty"`
}

type aeMeta struct {
	Profile []string `json:"profile,omitempty"`
}

type auditEvent struct {
	ResourceType   string            `json:"resourceType"`
	ID             string            `json:"id"`
	Meta           *aeMeta           `json:"meta,omitempty"`
	Type           coding            `json:"type"`
	Subtype        []coding          `json:"subtype,omitempty"`
	Action         string            `json:"action,omitempty"`
	Recorded       string            `json:"recorded"`
	Outcome        string            `json:"outcome"`
	OutcomeDesc    string            `json:"outcomeDesc,omitempty"`
	PurposeOfEvent []codeableConcept `json:"purposeOfEvent,omitempty"`
	Agent          []aeAgent         `json:"agent"`
	Source         aeSource          `json:"source"`
	Entity         []aeEntity        `json:"entity,omitempty"`
}

// Code systems and codes used.
const (
	sysAuditEventType   = "http://terminology.hl7.org/CodeSystem/audit-event-type"
	sysRestful          = "http://hl7.org/fhir/restful-interaction"
	sysDCM              = "http://dicom.nema.org/resources/ontology/DCM"
	sysParticipation    = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
	sysProvenance       = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
	sysEntityType       = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
	sysObjectRole       = "http://terminology.hl7.org/CodeSystem/object-role"
	sysSourceType       = "http://terminology.hl7.org/CodeSystem/security-source-type"
	sysActReason        = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
	sysBALPEntityType   = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
	balpProfile         = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
	sysUser             = "urn:omnigate:user"
	sysRole             = "urn:omnigate:role"
	sessionPolicyPrefix = "urn:omnigate:session:"
)

var (
	roleSource      = &codeableConcept{Coding: []coding{{System: sysDCM, Code: "110153", Display: "Source Role ID"}}}
	roleDestination = &codeableConcept{Coding: []coding{{System: sysDCM, Code: "110152", Display: "Destination Role ID"}}}
	roleApplication = &codeableConcept{Coding: []coding{{System: sysDCM, Code: "110150", Display: "Application"}}}
	roleCustodian   = &codeableConcept{Coding: []coding{{System: sysProvenance, Code: "custodian", Display: "Custodian"}}}
	roleRecipient   = &codeableConcept{Coding: []coding{{System: sysParticipation, Code: "IRCP", Display: "information recipient"}}}
	roleAuthor      = &codeableConcept{Coding: []coding{{System: sysParticipation, Code: "AUT", Display: "author (originator)"}}}

	entitySystemObject = &coding{System: sysEntityType, Code: "2", Display: "System Object"}
	entityPerson       = &coding{System: sysEntityType, Code: "1", Display: "Person"}
	entityRequestID    = &coding{System: sysBALPEntityType, Code: "XrequestId", Display: "transport specific unique identifier where http X-Request-Id is used"}
	objectDomain       = &coding{System: sysObjectRole, Code: "4", Display: "Domain Resource"}
	objectQuery        = &coding{System: sysObjectRole, Code: "24", Display: "Query"}
	objectPatient      = &coding{System: sysObjectRole, Code: "1", Display: "Patient"}

	breakGlass = coding{System: sysActReason, Code: "BTG", Display: "break the glass"}
)

// auditKind is how BALP treats an interaction: its action code, profile,
// and the agent types of client, server and user.
type auditKind struct {
	action  string
	profile string // "" when BALP has none
	client  *codeableConcept
	server  *codeableConcept
	user    *codeableConcept
	query   bool // a search: the query is an entity
}

func kindOf(interaction string) auditKind {
	switch interaction {
	case "read", "vread":
		return auditKind{action: "R", profile: "Read", client: roleDestination, server: roleSource, user: roleRecipient}
	case "history-instance":
		return auditKind{action: "R", client: roleDestination, server: roleSource, user: roleRecipient}
	case "search-type", "search-system":
		return auditKind{action: "E", profile: "Query", client: roleSource, server: roleDestination, user: roleRecipient, query: true}
	case "history-type", "history-system":
		return auditKind{action: "E", client: roleSource, server: roleDestination, user: roleRecipient, query: true}
	case "create":
		return auditKind{action: "C", profile: "Create", client: roleSource, server: roleDestination, user: roleAuthor}
	case "update", "patch":
		return auditKind{action: "U", profile: "Update", client: roleSource, server: roleDestination, user: roleAuthor}
	case "delete":
		return auditKind{action: "D", profile: "Delete", client: roleApplication, server: roleCustodian, user: roleAuthor}
	}
	return auditKind{action: "E", client: roleSource, server: roleDestination, user: roleRecipient}
}

// outcomeOf maps a record to the AuditEvent outcome: 0 success, 4 minor
// failure (a refusal, a client error), 8 serious failure (a server error).
func outcomeOf(rec *Record) string {
	switch {
	case rec.Status >= 500:
		return "8"
	case rec.Status >= 400 || rec.Decision == DecisionDenied:
		return "4"
	}
	return "0"
}

// auditEvents returns the AuditEvents of a record: one per patient
// concerned (BALP records one event per patient), or one when none is
// known. Their ids derive from the record's: the record's id itself, or
// "<id>-<n>" for the n-th patient of several.
func auditEvents(rec *Record, deps sinkDeps) []auditEvent {
	base := auditEventOf(rec, deps)
	if len(rec.Patients) <= 1 {
		if len(rec.Patients) == 1 {
			base.Entity = append(base.Entity, patientEntity(rec.Patients[0]))
			if base.Meta != nil {
				base.Meta.Profile = []string{balpProfile + "Patient" + kindOf(rec.Interaction).profile}
			}
		}
		return []auditEvent{base}
	}
	out := make([]auditEvent, len(rec.Patients))
	for i, p := range rec.Patients {
		ev := base
		ev.ID = rec.ID + "-" + strconv.Itoa(i+1)
		ev.Entity = append(append([]aeEntity(nil), base.Entity...), patientEntity(p))
		if base.Meta != nil {
			ev.Meta = &aeMeta{Profile: []string{balpProfile + "Patient" + kindOf(rec.Interaction).profile}}
		}
		out[i] = ev
	}
	return out
}

func patientEntity(id string) aeEntity {
	return aeEntity{What: &reference{Reference: "Patient/" + id}, Type: entityPerson, Role: objectPatient}
}

// auditEventOf builds the AuditEvent of rec without its patient entity.
func auditEventOf(rec *Record, deps sinkDeps) auditEvent {
	k := kindOf(rec.Interaction)
	ev := auditEvent{
		ResourceType: "AuditEvent",
		ID:           rec.ID,
		Type:         coding{System: sysAuditEventType, Code: "rest", Display: "Restful Operation"},
		Action:       k.action,
		Recorded:     rec.Time.UTC().Format("2006-01-02T15:04:05.000Z07:00"),
		Outcome:      outcomeOf(rec),
		Source: aeSource{
			Site:     deps.site,
			Observer: reference{Display: "OmniGate " + deps.site},
			Type:     []coding{{System: sysSourceType, Code: "4", Display: "Application Server"}},
		},
	}
	if interactionCodes[rec.Interaction] {
		ev.Subtype = []coding{{System: sysRestful, Code: rec.Interaction, Display: rec.Interaction}}
	}
	if ev.Outcome == "0" && k.profile != "" {
		ev.Meta = &aeMeta{Profile: []string{balpProfile + k.profile}}
	}
	if ev.Outcome != "0" {
		ev.OutcomeDesc = strconv.Itoa(rec.Status) + " " + http.StatusText(rec.Status)
		if rec.Reason != "" {
			ev.OutcomeDesc += ": " + rec.Reason
		}
	}
	var purpose []codeableConcept
	if rec.BreakGlass != "" {
		purpose = []codeableConcept{{Coding: []coding{breakGlass}, Text: rec.BreakGlass}}
		ev.PurposeOfEvent = purpose
	}

	// Agents: the user (when known), the client application, the server.
	if rec.User != "" {
		who := &reference{Reference: rec.FHIRUser, Identifier: &identifier{System: sysUser, Value: rec.User}, Display: rec.User}
		a := aeAgent{Type: k.user, Who: who, Name: rec.User, Requestor: true, PurposeOfUse: purpose}
		if rec.Role != "" {
			a.Role = []codeableConcept{{Coding: []coding{{System: sysRole, Code: rec.Role}}, Text: rec.Role}}
		}
		if rec.Session != "" {
			a.Policy = []string{sessionPolicyPrefix + rec.Session}
		}
		ev.Agent = append(ev.Agent, a)
	}
	client := aeAgent{Type: k.client, Requestor: rec.User == ""}
	if rec.ClientIP != "" {
		client.Who = &reference{Display: rec.ClientIP}
		client.Network = &network{Address: rec.ClientIP, Type: "2"}
	} else {
		client.Who = &reference{Display: "unknown client"}
	}
	server := aeAgent{Type: k.server, Who: &reference{Display: deps.site}, Network: &network{Address: deps.site, Type: "1"}}
	if deps.serverAddress != "" {
		server.Network = &network{Address: deps.serverAddress, Type: "5"}
	}
	ev.Agent = append(ev.Agent, client, server)

	// Entities: the request (X-Request-Id), the resource or the query.
	if rec.RequestID != "" {
		ev.Entity = append(ev.Entity, aeEntity{Type: entityRequestID, What: &reference{Identifier: &identifier{Value: rec.RequestID}}})
	}
	switch {
	case k.query:
		q := rec.Path
		if rec.Query != "" {
			q += "?" + rec.Query
		}
		ev.Entity = append(ev.Entity, aeEntity{Type: entitySystemObject, Role: objectQuery,
			Query: base64.StdEncoding.EncodeToString([]byte(rec.Method + " " + q)), Description: rec.Method + " " + q})
	case rec.Type != "" && rec.ResourceID != "":
		ref := rec.Type + "/" + rec.ResourceID
		if rec.VersionID != "" {
			ref += "/_history/" + rec.VersionID
		}
		e := aeEntity{Type: entitySystemObject, Role: objectDomain, What: &reference{Reference: ref}}
		if rec.Operation != "" {
			e.Description = "$" + rec.Operation
		}
		ev.Entity = append(ev.Entity, e)
	default:
		// A create whose id is unknown (refused, failed), a type-level
		// operation, a Bundle, a path that is no FHIR interaction.
		desc := rec.Method + " " + rec.Path
		if rec.Query != "" {
			desc += "?" + rec.Query
		}
		ev.Entity = append(ev.Entity, aeEntity{Type: entitySystemObject, Role: objectDomain, Description: desc})
	}
	return ev
}

// interactionCodes are the codes of http://hl7.org/fhir/restful-interaction.
var interactionCodes = map[string]bool{
	"read": true, "vread": true, "update": true, "patch": true, "delete": true, "history": true,
	"history-instance": true, "history-type": true, "history-system": true, "create": true, "search": true,
	"search-type": true, "search-system": true, "capabilities": true, "transaction": true, "batch": true, "operation": true,
}

// recordedTime parses a record's time back (for the lag); zero if bad.
func recordedTime(line []byte) time.Time {
	var r struct {
		Time time.Time `json:"time"`
	}
	if err := json.Unmarshal(line, &r); err != nil {
		return time.Time{}
	}
	return r.Time
}
