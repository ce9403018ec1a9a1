package ratelimit

import (
	"crypto/sha256"
	"encoding/hex"
	"net"
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
	return ipKey(clientIP(r.RemoteAddr, r.Header.Values("X-Forwarded-For"), k.trusted), k.ipv6Prefix)
}

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

// clientIP is the address of the client: the connection's peer
// (remoteAddr), unless the peer is a trusted proxy, in which case the
// X-Forwarded-For chain is walked from the right, past trusted proxies, to
// the first address that is not one. A client can prepend anything to
// X-Forwarded-For, so nothing left of that address is believed. An entry
// that does not parse stops the walk at the last address known good. The
// result is invalid only when remoteAddr does not parse.
func clientIP(remoteAddr string, xff []string, trusted []netip.Prefix) netip.Addr {
	peer := parseHostAddr(remoteAddr)
	if !peer.IsValid() || !isTrusted(peer, trusted) {
		return peer
	}
	client := peer
	for i := len(xff) - 1; i >= 0; i-- {
		line := xff[i]
		for line != "" {
			j := strings.LastIndexByte(line, ',')
			entry := line[j+1:]
			if j < 0 {
				line = ""
			} else {
				line = line[:j]
			}
			entry = strings.TrimSpace(entry)
			if entry == "" {
				continue
			}
			a := parseHostAddr(entry)
			if !a.IsValid() {
				return client
			}
			client = a
			if !isTrusted(a, trusted) {
				return a
			}
		}
	}
	return client
}

// parseHostAddr parses "ip", "ip:port", "[ipv6]:port" or "[ipv6]",
// dropping any zone and unmapping IPv4-mapped IPv6 addresses.
func parseHostAddr(s string) netip.Addr {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.WithZone("").Unmap()
	}
	host := s
	if h, _, err := net.SplitHostPort(s); err == nil {
		host = h
	} else if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		host = s[1 : len(s)-1]
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.WithZone("").Unmap()
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
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
