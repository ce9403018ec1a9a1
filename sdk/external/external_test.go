package external

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/omnigate/omnigate/sdk/external/contract"
	pb "github.com/omnigate/omnigate/sdk/external/proto"
)

func TestHeaderChanges(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(h http.Header)
		want []string
	}{
		{"none", func(http.Header) {}, nil},
		{"set", func(h http.Header) { h.Set("X-A", "2") }, []string{"SET X-A 2"}},
		{"add to existing", func(h http.Header) { h.Add("X-A", "2") }, []string{"SET X-A 1", "ADD X-A 2"}},
		{"new", func(h http.Header) { h.Add("X-New", "n") }, []string{"SET X-New n"}},
		{"delete", func(h http.Header) { h.Del("X-A") }, []string{"REMOVE X-A "}},
		{"emptied", func(h http.Header) { h["X-A"] = nil }, []string{"REMOVE X-A "}},
		{"several, sorted", func(h http.Header) { h.Set("X-B", "b"); h.Set("X-A", "a") }, []string{"SET X-A a", "SET X-B b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig, h := headerFrom([]*pb.Header{{Name: "X-A", Values: []string{"1"}}})
			tc.edit(h)
			var got []string
			for _, c := range headerChanges(orig, h) {
				got = append(got, c.Op.String()+" "+c.Name+" "+c.Value)
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

type fullPolicy struct {
	cfg struct {
		Header string `json:"header"`
	}
}

func (p *fullPolicy) Configure(ctx context.Context, c Config) error { return c.Decode(&p.cfg) }
func (p *fullPolicy) ReadRequestBody() bool                         { return true }
func (p *fullPolicy) ReadResponseBody() bool                        { return false }

func (p *fullPolicy) OnRequest(ctx context.Context, r *Request) error {
	switch r.Header.Get("X-Test") {
	case "deny":
		r.ReplyHeader().Set("WWW-Authenticate", "Bearer")
		r.Deny(401, "who are you")
	case "error":
		return errors.New("backend down")
	case "panic":
		panic("boom")
	case "skip":
		r.SkipResponse()
	}
	r.Header.Set(p.cfg.Header, r.Identity.User+" "+r.FHIR.Interaction)
	r.Count("seen", 1)
	return nil
}

func (p *fullPolicy) OnResponse(ctx context.Context, r *Response) error {
	r.Status = 299
	r.Header.Del("Server")
	return nil
}

type responseOnly struct{ ResponseOnly }

func (responseOnly) OnResponse(context.Context, *Response) error { return nil }

type noResponse struct{ ResponseOnly }

func TestServer(t *testing.T) {
	ctx := context.Background()
	s := newServer(&fullPolicy{})
	phases, err := s.Configure(ctx, &pb.ConfigureRequest{Version: contract.ProtocolVersion, Config: []byte(`{"header":"X-Who"}`)})
	if err != nil || !phases.Request || !phases.RequestBody || !phases.Response || phases.ResponseBody {
		t.Fatalf("phases %v, %v", phases, err)
	}
	if _, err := s.Configure(ctx, &pb.ConfigureRequest{Version: contract.ProtocolVersion, Config: []byte(`{"colour":"red"}`)}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("unknown config key: %v", err)
	}
	if _, err := s.Configure(ctx, &pb.ConfigureRequest{Version: 99}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("other version: %v", err)
	}
	if ph, _ := newServer(responseOnly{}).Configure(ctx, &pb.ConfigureRequest{Version: contract.ProtocolVersion}); ph.Request || !ph.Response {
		t.Errorf("response only: %v", ph)
	}
	if _, err := newServer(noResponse{}).Configure(ctx, &pb.ConfigureRequest{Version: contract.ProtocolVersion}); err == nil {
		t.Errorf("a policy with no handler configured")
	}

	req := func(test string) *pb.Request {
		return &pb.Request{Method: "GET", Path: "/fhir/R4/Patient/1",
			Headers:  []*pb.Header{{Name: "X-Test", Values: []string{test}}},
			Identity: &pb.Identity{User: "u1"}, Fhir: &pb.FHIR{Interaction: "read"}}
	}
	d, err := s.OnRequest(ctx, req(""))
	if err != nil || d.Action != pb.Action_ACTION_CONTINUE || len(d.HeaderChanges) != 1 ||
		d.HeaderChanges[0].Value != "u1 read" || d.Counters[0].Name != "seen" {
		t.Errorf("continue: %v %v", d, err)
	}
	d, err = s.OnRequest(ctx, req("deny"))
	if err != nil || d.Action != pb.Action_ACTION_STOP || !d.Reply.Deny || d.Reply.Status != 401 ||
		d.Reply.Headers[0].Name != "Www-Authenticate" || len(d.HeaderChanges) != 0 {
		t.Errorf("deny: %v %v", d, err)
	}
	if d, _ = s.OnRequest(ctx, req("skip")); d.Action != pb.Action_ACTION_SKIP_RESPONSE {
		t.Errorf("skip: %v", d)
	}
	if _, err = s.OnRequest(ctx, req("error")); status.Convert(err).Message() != "backend down" {
		t.Errorf("error: %v", err)
	}
	if _, err = s.OnRequest(ctx, req("panic")); status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "boom") {
		t.Errorf("panic: %v", err)
	}
	d, err = s.OnResponse(ctx, &pb.Response{Request: req(""), Status: 200,
		Headers: []*pb.Header{{Name: "Server", Values: []string{"x"}}}})
	if err != nil || d.Status != 299 || len(d.HeaderChanges) != 1 || d.HeaderChanges[0].Op != pb.HeaderChange_REMOVE || d.ReplaceBody {
		t.Errorf("response: %v %v", d, err)
	}
}

func TestInteractionsFrom(t *testing.T) {
	entries := []*pb.Interaction{
		{Interaction: "delete", Type: "Observation", Id: "o1", Method: "DELETE", Url: "Observation/o1"},
		{Method: "FROB", Url: "Patient/p1"},
		{Interaction: "create", Type: "Patient", Conditional: true, Method: "POST", Url: "Patient", IfNoneExist: "identifier=x"},
	}
	batch := &pb.FHIR{Interaction: "batch"}
	for _, tc := range []struct {
		name string
		m    *pb.Request
		want []Interaction
		err  error
	}{
		{"a batch's entries", &pb.Request{Fhir: batch, Interactions: entries, InteractionsState: pb.InteractionsState_INTERACTIONS_PRESENT},
			[]Interaction{
				{FHIR: FHIR{Interaction: "delete", Type: "Observation", ID: "o1"}, Method: "DELETE", URL: "Observation/o1"},
				{Method: "FROB", URL: "Patient/p1"},
				{FHIR: FHIR{Interaction: "create", Type: "Patient"}, Conditional: true, Method: "POST", URL: "Patient", IfNoneExist: "identifier=x"},
			}, nil},
		{"a Bundle without entries", &pb.Request{Fhir: batch, InteractionsState: pb.InteractionsState_INTERACTIONS_PRESENT}, []Interaction{}, nil},
		{"too large", &pb.Request{Fhir: batch, InteractionsState: pb.InteractionsState_INTERACTIONS_TOO_LARGE}, nil, ErrInteractionsTooLarge},
		{"invalid", &pb.Request{Fhir: batch, InteractionsState: pb.InteractionsState_INTERACTIONS_INVALID}, nil, ErrInteractionsInvalid},
		{"not FHIR", &pb.Request{}, nil, ErrNotFHIR},
		{"a gateway older than the list", &pb.Request{Fhir: batch}, nil, ErrInteractionsUnsupported},
		{"a state of a later contract", &pb.Request{Fhir: batch, InteractionsState: 9}, nil, ErrInteractionsUnsupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := requestFrom(tc.m).Interactions()
			if err != tc.err || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, %v\nwant %+v, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestSetInteractions(t *testing.T) {
	var r Request
	r.SetInteractions([]Interaction{{FHIR: FHIR{Interaction: "read"}, URL: "Patient/p1?_elements=id"}}, nil)
	list, err := r.Interactions()
	if err != nil || len(list) != 1 || list[0].Query().Get("_elements") != "id" {
		t.Errorf("got %+v, %v", list, err)
	}
}
