package ratelimit

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/netip"
	"strings"

	"github.com/omnigate/omnigate/gateway"
)

// keyer derives the client key of a request.
type keyer struct {
	by         string
	header     string
	trusted    []netip.Prefix
	ipv6Prefix int
}

// maxIDLen caps identities used as keys as they are; longer ones are
// hashed.
const maxIDLen = 128

// key returns the client key of r: "user:<id>", "ip:<address or IPv6
// prefix>" or "key:<hash of the header value>".
func (k *keyer) key(r *http.Request, id *gateway.Identity) string {
	if k.by == KeyHeader {
		if v := r.Header.Get(k.header); v != "" {
			sum := sha256.Sum256([]byte(v))
			return "key:" + hex.EncodeToString(sum[:12])
		}
	}
	if k.by != KeyIP && id != nil && id.UserID != "" {
		if len(id.UserID) > maxIDLen {
			sum := sha256.Sum256([]byte(id.UserID))
			return "user:sha256:" + hex.EncodeToString(sum[:12])
		}
		return "user:" + id.UserID
	}
	if len(k.trusted) > 0 {
		return ipKey(gateway.ForwardedClient(r.RemoteAddr, r.Header.Values("X-Forwarded-For"), k.trusted), k.ipv6Prefix)
	}
	return ipKey(gateway.ClientIP(r), k.ipv6Prefix)
}

// IPKey is the client key of address a, as the limiter counts it:
// "ip:<address>", IPv6 addresses as their network prefix of v6bits bits
// (one host usually holds a whole /64), "ip:unknown" for an invalid one.
func IPKey(a netip.Addr, v6bits int) string { return ipKey(a, v6bits) }

// ipKey formats a client address, IPv6 addresses as their network prefix.
func ipKey(a netip.Addr, v6bits int) string {
	if !a.IsValid() {
		return "ip:unknown"
	}
	if a.Is6() && v6bits < 128 {
		p, _ := a.Prefix(v6bits)
		return "ip:" + p.String()
	}
	return "ip:" + a.String()
}

// isFHIRSearch reports whether a request on a FHIR route is a search:
// GET [base]/Type, or GET or POST [base]/Type/_search (and the same at the
// system level, [base]/_search).
func isFHIRSearch(method, path string) bool {
	path = strings.TrimSuffix(path, "/")
	last := path[strings.LastIndexByte(path, '/')+1:]
	if last == "_search" {
		return method == http.MethodGet || method == http.MethodPost
	}
	if method != http.MethodGet || last == "" || last[0] < 'A' || last[0] > 'Z' {
		return false
	}
	for i := 1; i < len(last); i++ {
		c := last[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}
