package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"strings"
	"sync"
	"time"
)

// upstream is a route's reverse proxy: httputil.ReverseProxy with a
// keep-alive pool sized for a gateway (the default transport keeps only two
// idle connections per host and churns under load), pooled copy buffers,
// X-Forwarded-* headers and errors answered in the route's format.
type upstream struct {
	cfg       *UpstreamConfig
	proxy     *httputil.ReverseProxy
	transport *http.Transport
	route     string
	srv       *Server
}

// newUpstream builds the proxy of a route of rt, whose plugins are built
// (they declare the gateway credentials it removes).
func newUpstream(s *Server, rt *runtime, routeName string, cfg *UpstreamConfig) (*upstream, error) {
	tr := &http.Transport{
		Proxy: nil, // never route upstream traffic through HTTP_PROXY
		DialContext: (&net.Dialer{
			Timeout:   cfg.DialTimeout,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          0, // no global cap; the per-host cap applies
		MaxIdleConnsPerHost:   cfg.MaxIdleConnsPerHost,
		IdleConnTimeout:       cfg.IdleConnTimeout,
		TLSHandshakeTimeout:   cfg.DialTimeout,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
	}
	if cfg.TLS != nil {
		tc, err := cfg.TLS.clientConfig()
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = tc
	}
	u := &upstream{cfg: cfg, transport: tr, route: routeName, srv: s}
	target := cfg.target
	creds := rt.credentials
	strip := []string{DefaultIdentityHeader}
	idc := cfg.Identity
	if idc != nil && idc.Header != DefaultIdentityHeader {
		strip = append(strip, idc.Header)
	}
	u.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			if cfg.StripPrefix != "" {
				p := strings.TrimPrefix(pr.In.URL.Path, cfg.StripPrefix)
				if p == "" || p[0] != '/' {
					p = "/" + p
				}
				pr.Out.URL.Path, pr.Out.URL.RawPath = p, ""
			}
			pr.SetURL(target)
			pr.SetXForwarded()
			if cfg.PreserveHost {
				pr.Out.Host = pr.In.Host
			}
			// The gateway's own credentials never leave it; an upstream
			// that needs the identity gets it signed instead.
			stripCredentials(pr.Out.Header, creds, strip...)
			if idc != nil {
				if id := IdentityFrom(pr.In.Context()); id != nil && id.UserID != "" {
					pr.Out.Header.Set(idc.Header, SignIdentity(id, idc.key, idc.Audience,
						RequestID(pr.In.Context()), time.Now(), idc.TTL))
				}
			}
		},
		// The gateway answers with its own X-Request-Id (the one it sent
		// upstream); an upstream that echoes it would double it.
		ModifyResponse: func(res *http.Response) error {
			res.Header.Del(RequestIDHeader)
			return nil
		},
		Transport:     tr,
		FlushInterval: cfg.FlushInterval,
		BufferPool:    bufferPool{},
		ErrorHandler:  u.errorHandler,
		ErrorLog:      nil,
	}
	return u, nil
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if u.cfg.Timeout > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), u.cfg.Timeout)
		defer cancel()
		r = r.WithContext(ctx)
	}
	u.proxy.ServeHTTP(w, r)
}

func (u *upstream) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	status, kind, msg := http.StatusBadGateway, "other", "upstream unavailable"
	var mbe *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &mbe):
		status, kind = http.StatusRequestEntityTooLarge, "body_too_large"
		msg = fmt.Sprintf("request body exceeds the limit of %d bytes", mbe.Limit)
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client went away; there is nobody to answer.
		u.srv.metrics.upstreamErrors.WithLabelValues(u.route, "client_canceled").Inc()
		w.WriteHeader(499)
		return
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		status, kind, msg = http.StatusGatewayTimeout, "timeout", "upstream timed out"
	case isConnectError(err):
		kind, msg = "connect", "upstream unreachable"
	}
	u.srv.metrics.upstreamErrors.WithLabelValues(u.route, kind).Inc()
	level := slog.LevelWarn
	if status >= 500 {
		level = slog.LevelError
	}
	u.srv.logger.LogAttrs(r.Context(), level, "upstream error", slog.String("request_id", RequestID(r.Context())),
		slog.String("route", u.route), slog.String("kind", kind), slog.String("error", err.Error()))
	Error(w, r, status, msg)
}

func isConnectError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func (u *upstream) Close() error {
	u.transport.CloseIdleConnections()
	return nil
}

// bufferPool reuses 32 KiB copy buffers across proxied responses.
type bufferPool struct{}

var proxyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *proxyBuffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { proxyBuffers.Put(&b) }

// clientConfig builds a tls.Config from the files named in c.
func (c *TLSConfig) clientConfig() (*tls.Config, error) {
	tc := &tls.Config{
		ServerName:         c.ServerName,
		InsecureSkipVerify: c.InsecureSkipVerify,
		MinVersion:         tls.VersionTLS12,
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read tls ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca_file %s holds no PEM certificate", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" || c.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load tls client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// ClientTLS builds a *tls.Config from c (nil when c is nil), for plugins
// that dial services named in the config.
func (c *TLSConfig) ClientTLS() (*tls.Config, error) {
	if c == nil {
		return nil, nil
	}
	return c.clientConfig()
}
