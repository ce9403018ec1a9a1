package gateway

import (
	"crypto/rand"
	"encoding/base32"
	"strconv"
	"sync/atomic"
)

// RequestIDHeader carries the request id to upstreams and back to clients.
const RequestIDHeader = "X-Request-Id"

// validRequestID accepts the ids that load balancers and tracing systems
// send (UUIDs, hex, base64): 1 to 128 characters of [A-Za-z0-9._:+/=-].
func validRequestID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == ':', c == '+', c == '/', c == '=', c == '-':
		default:
			return false
		}
	}
	return true
}

// Request ids are a random per-process prefix and a counter: unique across
// instances and restarts, and cheap. They are identifiers, not secrets.
var (
	idPrefix  = newIDPrefix()
	idCounter atomic.Uint64
)

func newIDPrefix() string {
	var b [10]byte
	rand.Read(b[:])
	return base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]) + "-"
}

func newRequestID() string {
	var buf [48]byte
	n := copy(buf[:], idPrefix)
	return string(strconv.AppendUint(buf[:n], idCounter.Add(1), 36))
}
