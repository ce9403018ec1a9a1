package contract

import (
	"net/http"

	pb "github.com/omnigate/omnigate/sdk/external/proto"
)

// Headers returns h as the contract's header list (nil when h is empty).
func Headers(h http.Header) []*pb.Header {
	if len(h) == 0 {
		return nil
	}
	out := make([]*pb.Header, 0, len(h))
	for k, v := range h {
		out = append(out, &pb.Header{Name: k, Values: v})
	}
	return out
}

// ApplyHeaderChanges applies a decision's header changes to h, in order:
// set, add, remove.
func ApplyHeaderChanges(h http.Header, changes []*pb.HeaderChange) {
	for _, c := range changes {
		switch c.Op {
		case pb.HeaderChange_SET:
			h.Set(c.Name, c.Value)
		case pb.HeaderChange_ADD:
			h.Add(c.Name, c.Value)
		case pb.HeaderChange_REMOVE:
			h.Del(c.Name)
		}
	}
}
