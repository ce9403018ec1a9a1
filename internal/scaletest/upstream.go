package scaletest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// standIn is a small in-memory FHIR server used as every instance's
// upstream with Backend "upstream": read, create, update and searches by
// patient or subject, enough for the simulated users. It lets the plugins
// be verified without the embedded FHIR server.
type standIn struct {
	base string
	mu   sync.RWMutex
	res  map[string][]byte // "Type/id" → JSON
	next int
	srv  *http.Server
	addr string
}

func startStandIn(seed []byte, base string) (*standIn, error) {
	s := &standIn{res: map[string][]byte{}, base: base}
	var b struct {
		Entry []struct {
			Resource json.RawMessage `json:"resource"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(seed, &b); err != nil {
		return nil, err
	}
	for _, e := range b.Entry {
		var h struct{ ResourceType, ID string }
		json.Unmarshal(e.Resource, &h)
		s.res[h.ResourceType+"/"+h.ID] = e.Resource
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.addr = "http://" + ln.Addr().String()
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(ln)
	return s, nil
}

func (s *standIn) close() { s.srv.Close() }

func (s *standIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := strings.Trim(strings.TrimPrefix(r.URL.Path, s.base), "/")
	parts := strings.Split(p, "/")
	w.Header().Set("Content-Type", "application/fhir+json")
	switch {
	case p == "metadata":
		io.WriteString(w, `{"resourceType":"CapabilityStatement","status":"active","kind":"instance","fhirVersion":"4.0.1","format":["json"]}`)
	case (len(parts) == 2 || len(parts) == 4 && parts[2] == "_history") && r.Method == http.MethodGet:
		// A version read answers the current version: the stand-in
		// keeps no history.
		s.mu.RLock()
		b, ok := s.res[parts[0]+"/"+parts[1]]
		s.mu.RUnlock()
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}`)
			return
		}
		w.Write(b)
	case len(parts) == 1 && r.Method == http.MethodGet:
		s.search(w, r, parts[0])
	case (len(parts) == 1 && r.Method == http.MethodPost) || (len(parts) == 2 && r.Method == http.MethodPut):
		var m map[string]any
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&m); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid"}]}`)
			return
		}
		s.mu.Lock()
		status := http.StatusOK
		if len(parts) == 1 {
			s.next++
			m["id"] = fmt.Sprintf("new-%d", s.next)
			status = http.StatusCreated
		} else {
			m["id"] = parts[1]
		}
		m["meta"] = map[string]any{"versionId": "1"}
		b, _ := json.Marshal(m)
		key := parts[0] + "/" + m["id"].(string)
		s.res[key] = b
		s.mu.Unlock()
		w.Header().Set("Location", s.base+"/"+key)
		w.WriteHeader(status)
		w.Write(b)
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

// search answers [type]?patient=|subject= (or no parameter) with up to
// _count (default 10) matches.
func (s *standIn) search(w http.ResponseWriter, r *http.Request, typ string) {
	q := r.URL.Query()
	ref := q.Get("patient")
	if ref == "" {
		ref = q.Get("subject")
	}
	if ref != "" && !strings.Contains(ref, "/") {
		ref = "Patient/" + ref
	}
	var entries []json.RawMessage
	s.mu.RLock()
	for k, b := range s.res {
		if len(entries) >= 10 || !strings.HasPrefix(k, typ+"/") {
			continue
		}
		if ref == "" || strings.Contains(string(b), `"reference":"`+ref+`"`) || (typ == "Patient" && k == ref) {
			entries = append(entries, json.RawMessage(`{"resource":`+string(b)+`}`))
		}
	}
	s.mu.RUnlock()
	b, _ := json.Marshal(map[string]any{"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries})
	w.Write(b)
}
