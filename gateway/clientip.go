package gateway

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// ClientIP returns the address of the client that sent r: the connection's
// peer, or, when the peer is one of server.trusted_proxies, the address
// that proxy put in X-Forwarded-For (walking right to left past further
// trusted proxies). The result is invalid only when RemoteAddr does not
// parse.
func ClientIP(r *http.Request) netip.Addr {
	var trusted []netip.Prefix
	if st := stateFrom(r.Context()); st != nil && st.route != nil {
		trusted = st.route.trusted
	}
	return ForwardedClient(r.RemoteAddr, r.Header.Values("X-Forwarded-For"), trusted)
}

// ForwardedClient returns the client address given the connection's
// remoteAddr, the X-Forwarded-For header lines and the trusted proxies:
// walking from the peer leftwards through X-Forwarded-For, the first
// address that is not a trusted proxy. A client can prepend anything to
// X-Forwarded-For, so nothing left of that address is believed. An entry
// that does not parse stops the walk at the last address known good.
func ForwardedClient(remoteAddr string, xff []string, trusted []netip.Prefix) netip.Addr {
	peer := ParseHostAddr(remoteAddr)
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
			a := ParseHostAddr(entry)
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

// ParseHostAddr parses "ip", "ip:port", "[ipv6]:port" or "[ipv6]",
// dropping any zone and unmapping IPv4-mapped IPv6 addresses.
func ParseHostAddr(s string) netip.Addr {
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

// ParsePrefix parses a CIDR ("10.0.0.0/8") or a single address
// ("10.0.0.7", a /32 or /128).
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR prefix %q", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid IP address %q", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
