package external

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"slices"
	"sort"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/omnigate/omnigate/sdk/external/contract"
	pb "github.com/omnigate/omnigate/sdk/external/proto"
)

// server adapts a Policy to the Policy gRPC service.
type server struct {
	pb.UnimplementedPolicyServer
	p Policy
}

func newServer(p Policy) *server { return &server{p: p} }

func (s *server) Configure(ctx context.Context, req *pb.ConfigureRequest) (resp *pb.ConfigureResponse, err error) {
	if req.Version != contract.ProtocolVersion {
		return nil, status.Errorf(codes.FailedPrecondition, "gateway speaks contract version %d, this plugin %d", req.Version, contract.ProtocolVersion)
	}
	if c, ok := s.p.(Configurer); ok {
		defer recoverCall("Configure", &err)
		if err := c.Configure(ctx, Config{Name: req.PluginName, JSON: req.Config}); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	resp = &pb.ConfigureResponse{Request: true}
	if _, ok := s.p.(interface{ responseOnly() }); ok {
		resp.Request = false
	}
	if b, ok := s.p.(RequestBodyReader); ok && resp.Request {
		resp.RequestBody = b.ReadRequestBody()
	}
	if _, ok := s.p.(ResponsePolicy); ok {
		resp.Response = true
		if b, ok := s.p.(ResponseBodyReader); ok {
			resp.ResponseBody = b.ReadResponseBody()
		}
	}
	if !resp.Request && !resp.Response {
		return nil, status.Error(codes.FailedPrecondition, "the policy embeds ResponseOnly but has no OnResponse method")
	}
	return resp, nil
}

func (s *server) OnRequest(ctx context.Context, m *pb.Request) (_ *pb.Decision, err error) {
	r := requestFrom(m)
	defer recoverCall("OnRequest", &err)
	if err := s.p.OnRequest(ctx, r); err != nil {
		return nil, status.Error(codes.Unknown, err.Error())
	}
	var changes []*pb.HeaderChange
	if r.d.action != pb.Action_ACTION_STOP {
		changes = headerChanges(r.orig, r.Header)
	}
	return r.d.proto(changes), nil
}

func (s *server) OnResponse(ctx context.Context, m *pb.Response) (_ *pb.Decision, err error) {
	rp, ok := s.p.(ResponsePolicy)
	if !ok {
		return nil, status.Error(codes.Unimplemented, "the policy has no OnResponse method")
	}
	r := &Response{
		Request:      requestFrom(m.Request),
		Status:       int(m.Status),
		status:       int(m.Status),
		BodyTooLarge: m.BodyState == pb.BodyState_BODY_TOO_LARGE,
		BodyEncoded:  m.BodyState == pb.BodyState_BODY_ENCODED,
	}
	r.orig, r.Header = headerFrom(m.Headers)
	if m.BodyState == pb.BodyState_BODY_PRESENT {
		r.Body = m.Body
	}
	defer recoverCall("OnResponse", &err)
	if err := rp.OnResponse(ctx, r); err != nil {
		return nil, status.Error(codes.Unknown, err.Error())
	}
	var changes []*pb.HeaderChange
	if r.d.action != pb.Action_ACTION_STOP {
		changes = headerChanges(r.orig, r.Header)
	}
	d := r.d.proto(changes)
	if r.d.action != pb.Action_ACTION_STOP {
		if r.Status != r.status {
			d.Status = int32(r.Status)
		}
		if r.setBody {
			d.ReplaceBody, d.Body = true, r.newBody
		}
	}
	return d, nil
}

// recoverCall turns a panic of the policy into an error for this call
// only, and logs its stack.
func recoverCall(method string, err *error) {
	if v := recover(); v != nil {
		Logger.Error("policy panicked", slog.String("method", method),
			slog.String("panic", fmt.Sprint(v)), slog.String("stack", string(debug.Stack())))
		*err = status.Errorf(codes.Internal, "policy panicked in %s: %v", method, v)
	}
}

func requestFrom(m *pb.Request) *Request {
	if m == nil {
		m = &pb.Request{}
	}
	r := &Request{
		Method:       m.Method,
		Path:         m.Path,
		RawQuery:     m.RawQuery,
		Route:        m.Route,
		ClientIP:     m.ClientIp,
		ID:           m.RequestId,
		BodyTooLarge: m.BodyState == pb.BodyState_BODY_TOO_LARGE,
	}
	r.orig, r.Header = headerFrom(m.Headers)
	if m.BodyState == pb.BodyState_BODY_PRESENT {
		r.Body = m.Body
	}
	if id := m.Identity; id != nil {
		r.Identity = &Identity{User: id.User, Role: id.Role, Scopes: id.Scopes,
			Patient: id.Patient, Session: id.Session, Method: id.Method}
	}
	if f := m.Fhir; f != nil {
		r.FHIR = &FHIR{Interaction: f.Interaction, Type: f.Type, ID: f.Id, VersionID: f.VersionId,
			Operation: f.Operation, CompartmentType: f.CompartmentType, CompartmentID: f.CompartmentId}
	}
	r.inter, r.interErr = interactionsFrom(m)
	return r
}

// interactionsFrom reads the request's list of FHIR interactions.
func interactionsFrom(m *pb.Request) ([]Interaction, error) {
	switch m.InteractionsState {
	case pb.InteractionsState_INTERACTIONS_PRESENT:
	case pb.InteractionsState_INTERACTIONS_TOO_LARGE:
		return nil, ErrInteractionsTooLarge
	case pb.InteractionsState_INTERACTIONS_INVALID:
		return nil, ErrInteractionsInvalid
	case pb.InteractionsState_INTERACTIONS_ABSENT:
		if m.Fhir != nil {
			return nil, ErrInteractionsUnsupported // a gateway older than the list
		}
		return nil, ErrNotFHIR
	default: // a state of a later contract: not known complete
		return nil, ErrInteractionsUnsupported
	}
	out := make([]Interaction, len(m.Interactions))
	for i, x := range m.Interactions {
		out[i] = Interaction{
			FHIR: FHIR{Interaction: x.Interaction, Type: x.Type, ID: x.Id, VersionID: x.VersionId,
				Operation: x.Operation, CompartmentType: x.CompartmentType, CompartmentID: x.CompartmentId},
			Conditional: x.Conditional, Method: x.Method, URL: x.Url, IfNoneExist: x.IfNoneExist,
		}
	}
	return out, nil
}

// headerFrom returns the headers as received and a copy for the handler to
// change.
func headerFrom(hs []*pb.Header) (orig, h http.Header) {
	orig = make(http.Header, len(hs))
	h = make(http.Header, len(hs))
	for _, x := range hs {
		orig[x.Name] = x.Values
		h[x.Name] = slices.Clone(x.Values)
	}
	return orig, h
}

// headerChanges returns the changes that turn orig into h: removals, then
// each changed name set to its first value with the others added, in name
// order.
func headerChanges(orig, h http.Header) []*pb.HeaderChange {
	var out []*pb.HeaderChange
	for k := range orig {
		if _, ok := h[k]; !ok {
			out = append(out, &pb.HeaderChange{Op: pb.HeaderChange_REMOVE, Name: k})
		}
	}
	names := make([]string, 0, len(h))
	for k, v := range h {
		if !slices.Equal(orig[k], v) {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		v := h[k]
		if len(v) == 0 {
			out = append(out, &pb.HeaderChange{Op: pb.HeaderChange_REMOVE, Name: k})
			continue
		}
		out = append(out, &pb.HeaderChange{Op: pb.HeaderChange_SET, Name: k, Value: v[0]})
		for _, x := range v[1:] {
			out = append(out, &pb.HeaderChange{Op: pb.HeaderChange_ADD, Name: k, Value: x})
		}
	}
	return out
}
