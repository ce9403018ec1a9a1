package audit

import (
	"strconv"
	"sync"
	"time"

	"github.com/omnigate/omnigate/internal/jsonstr"
)

// appendJSON appends the record's JSON to b: the same bytes as
// json.Marshal(r) (field order, omitempty, HTML-safe escaping), without
// reflection; every record of every request goes through it.
func (r *Record) appendJSON(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, r.ID)
	b = append(b, `,"time":"`...)
	b = r.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	b = appendField(b, "request_id", r.RequestID)
	b = appendField(b, "user", r.User)
	b = appendField(b, "role", r.Role)
	b = appendField(b, "fhir_user", r.FHIRUser)
	b = appendField(b, "session", r.Session)
	b = appendField(b, "client_ip", r.ClientIP)
	b = appendField(b, "route", r.Route)
	b = append(b, `,"method":`...)
	b = appendString(b, r.Method)
	b = append(b, `,"path":`...)
	b = appendString(b, r.Path)
	b = append(b, `,"interaction":`...)
	b = appendString(b, r.Interaction)
	b = appendField(b, "type", r.Type)
	b = appendField(b, "resource_id", r.ResourceID)
	b = appendField(b, "version_id", r.VersionID)
	b = appendField(b, "operation", r.Operation)
	b = appendField(b, "compartment", r.Compartment)
	b = appendField(b, "query", r.Query)
	b = appendField(b, "bundle", r.Bundle)
	if r.Entry != nil {
		b = append(b, `,"entry":`...)
		b = strconv.AppendInt(b, int64(*r.Entry), 10)
	}
	if r.Entries != 0 {
		b = append(b, `,"entries":`...)
		b = strconv.AppendInt(b, int64(r.Entries), 10)
	}
	if len(r.Patients) > 0 {
		b = append(b, `,"patients":[`...)
		for i, p := range r.Patients {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, p)
		}
		b = append(b, ']')
	}
	if r.PatientsIncomplete {
		b = append(b, `,"patients_incomplete":true`...)
	}
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	b = append(b, `,"decision":`...)
	b = appendString(b, r.Decision)
	b = appendField(b, "reason", r.Reason)
	b = appendField(b, "break_glass", r.BreakGlass)
	return append(b, '}')
}

// appendField appends ,"key":"value" unless value is empty (omitempty).
func appendField(b []byte, key, value string) []byte {
	if value == "" {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return appendString(b, value)
}

// appendString appends s as json.Marshal does (HTML-safe).
func appendString(b []byte, s string) []byte { return jsonstr.Append(b, s, true) }

// lineBufs recycles the buffers records are encoded into (the spool copies
// each line).
var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}
