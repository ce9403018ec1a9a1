package ratelimit

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/gateway"
)

var testTrusted = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:ffff::/48")}

func TestClientIP(t *testing.T) {
	for _, tc := range []struct {
		name, remote string
		xff          []string
		want         string
	}{
		{"no proxy", "192.0.2.1:1234", nil, "192.0.2.1"},
		{"untrusted peer: XFF ignored", "192.0.2.1:1234", []string{"203.0.113.9"}, "192.0.2.1"},
		{"trusted peer", "10.0.0.1:1", []string{"203.0.113.9"}, "203.0.113.9"},
		{"spoofed left part", "10.0.0.1:1", []string{"1.2.3.4, 203.0.113.9"}, "203.0.113.9"},
		{"two trusted hops", "10.0.0.1:1", []string{"1.2.3.4, 203.0.113.9, 10.9.9.9"}, "203.0.113.9"},
		{"several header lines", "10.0.0.1:1", []string{"1.2.3.4", "203.0.113.9", "10.0.0.2"}, "203.0.113.9"},
		{"all trusted", "10.0.0.1:1", []string{"10.0.0.3, 10.0.0.2"}, "10.0.0.3"},
		{"garbage stops the walk", "10.0.0.1:1", []string{"203.0.113.9, bogus, 10.0.0.2"}, "10.0.0.2"},
		{"port and brackets", "10.0.0.1:1", []string{"[2001:db8::1]:443"}, "2001:db8::1"},
		{"ipv4 with port", "10.0.0.1:1", []string{"203.0.113.9:8080"}, "203.0.113.9"},
		{"mapped ipv4 peer", "[::ffff:10.0.0.1]:1", []string{"203.0.113.9"}, "203.0.113.9"},
		{"zone dropped", "[fe80::1%eth0]:1", nil, "fe80::1"},
		{"empty entries", "10.0.0.1:1", []string{" , 203.0.113.9 ,"}, "203.0.113.9"},
		{"no port", "192.0.2.7", nil, "192.0.2.7"},
		{"unparsable peer", "pipe", []string{"203.0.113.9"}, "invalid IP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := gateway.ForwardedClient(tc.remote, tc.xff, testTrusted).String(); got != tc.want {
				t.Fatalf("clientIP = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestKeys(t *testing.T) {
	k := &keyer{by: KeyIdentity, ipv6Prefix: 64}
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "[2001:db8:1:2:3:4:5:6]:99"
	if got := k.key(r, nil); got != "ip:2001:db8:1:2::/64" {
		t.Errorf("IPv6 key %q", got)
	}
	if got := k.key(r, &gateway.Identity{UserID: "alice"}); got != "user:alice" {
		t.Errorf("identity key %q", got)
	}
	long := strings.Repeat("x", 200)
	if got := k.key(r, &gateway.Identity{UserID: long}); !strings.HasPrefix(got, "user:sha256:") {
		t.Errorf("long identity key %q", got)
	}
	ip := &keyer{by: KeyIP, ipv6Prefix: 128}
	if got := ip.key(r, &gateway.Identity{UserID: "alice"}); got != "ip:2001:db8:1:2:3:4:5:6" {
		t.Errorf("ip key %q", got)
	}
}

func TestIsFHIRSearch(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		want         bool
	}{
		{"GET", "/fhir/R4/Patient", true},
		{"GET", "/fhir/R4/Patient/", true},
		{"GET", "/fhir/R4/Patient/1", false},
		{"GET", "/fhir/R4/Patient/1/Observation", true},
		{"POST", "/fhir/R4/Patient/_search", true},
		{"POST", "/fhir/R4/Patient", false},
		{"GET", "/fhir/R4/metadata", false},
		{"GET", "/fhir/R4", false},
		{"GET", "/fhir/R4/Patient/1/_history", false},
		{"GET", "/", false},
	} {
		if got := isFHIRSearch(tc.method, tc.path); got != tc.want {
			t.Errorf("isFHIRSearch(%s %s) = %v", tc.method, tc.path, got)
		}
	}
}

// FuzzClientKey checks the parsing of the peer address and
// X-Forwarded-For: it never panics, an untrusted peer is never overridden
// by the header, and the result is the peer or an address from the header.
func FuzzClientKey(f *testing.F) {
	for _, s := range [][2]string{
		{"10.0.0.1:1", "203.0.113.9"},
		{"10.0.0.1:1", "1.2.3.4, 203.0.113.9, 10.0.0.2"},
		{"192.0.2.1:5", "203.0.113.9"},
		{"[2001:db8:ffff::1]:1", "[2001:db8::1]:443, 2001:db8:ffff::2"},
		{"[::ffff:10.0.0.1]:1", "::ffff:1.2.3.4"},
		{"10.0.0.1:1", ",,, ,"},
		{"10.0.0.1:1", "fe80::1%eth0"},
		{"pipe", "1.1.1.1"},
		{"10.0.0.1:1", "[::1"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, remote, xff string) {
		got := gateway.ForwardedClient(remote, []string{xff}, testTrusted)
		peer := gateway.ParseHostAddr(remote)
		if peer.IsValid() != got.IsValid() {
			t.Fatalf("peer %q valid %v, result %v", remote, peer.IsValid(), got)
		}
		if !peer.IsValid() {
			return
		}
		if !trustedPeer(peer, testTrusted) && got != peer {
			t.Fatalf("untrusted peer %s overridden by X-Forwarded-For %q: %s", peer, xff, got)
		}
		if got != peer {
			found := false
			for _, e := range strings.Split(xff, ",") {
				if gateway.ParseHostAddr(strings.TrimSpace(e)) == got {
					found = true
				}
			}
			if !found {
				t.Fatalf("result %s is neither the peer nor in %q", got, xff)
			}
		}
		if got.Zone() != "" || got.Is4In6() {
			t.Fatalf("result %s keeps a zone or an IPv4 mapping", got)
		}
		r := &http.Request{RemoteAddr: remote, Header: http.Header{"X-Forwarded-For": {xff}}}
		k := (&keyer{by: KeyIP, trusted: testTrusted, ipv6Prefix: 64}).key(r, nil)
		if !strings.HasPrefix(k, "ip:") || strings.ContainsAny(k, "\x00\r\n ") {
			t.Fatalf("key %q", k)
		}
	})
}

func trustedPeer(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
