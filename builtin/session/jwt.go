package session

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"

	"github.com/omnigate/omnigate/gateway"
)

// JWTConfig accepts bearer JWTs from an external identity provider (OIDC,
// SMART on FHIR). Signatures are checked by github.com/golang-jwt/jwt/v5
// against keys from a JWKS (RS256, ES256) or a shared secret (HS256); only
// the algorithms listed are accepted, so "alg: none" and RS/HS confusion
// are refused.
type JWTConfig struct {
	// Issuer must equal the token's iss. Required.
	Issuer string `yaml:"issuer"`
	// Audience must be in the token's aud. Required.
	Audience string `yaml:"audience"`
	// JWKSFile is a JSON Web Key Set file (RS256/ES256 keys).
	JWKSFile string `yaml:"jwks_file"`
	// JWKSURL is fetched at start and every JWKSRefresh (and, rate
	// limited, when a token names an unknown key id).
	JWKSURL string `yaml:"jwks_url"`
	// JWKSRefresh is how often JWKSURL is fetched again. Default 1h.
	JWKSRefresh time.Duration `yaml:"jwks_refresh"`
	// HS256Secret (or HS256SecretFile) verifies HS256 tokens. At least 32
	// bytes.
	HS256Secret     string `yaml:"hs256_secret"`
	HS256SecretFile string `yaml:"hs256_secret_file"`
	// Algorithms accepted. Default: RS256 and ES256 with a JWKS, HS256 with
	// a secret.
	Algorithms []string `yaml:"algorithms"`
	// Leeway tolerates clock skew on exp, nbf and iat. Default 30s.
	Leeway time.Duration `yaml:"leeway"`
	// Claims maps token claims to the identity.
	Claims ClaimsConfig `yaml:"claims"`
	// DefaultRole is the role when the role claim is missing. Default
	// "user".
	DefaultRole string `yaml:"default_role"`
	// Stateless lets a valid JWT authenticate a request by itself. Default
	// true. When false, JWTs are only exchanged for server sessions at
	// POST <mount>/session.
	Stateless *bool `yaml:"stateless"`
}

// ClaimsConfig names the claims the identity is read from. Dotted names
// reach into objects (realm_access.roles).
type ClaimsConfig struct {
	// User, default "sub".
	User string `yaml:"user"`
	// Role, default "role". An array claim gives the first element that
	// is a configured role, else its first element.
	Role string `yaml:"role"`
	// Scopes, default "scope": a space-separated string or an array.
	Scopes string `yaml:"scopes"`
	// Patient, default "patient".
	Patient string `yaml:"patient"`
	// FHIRUser, default "fhirUser" (SMART). When the patient claim is
	// absent and fhirUser names a Patient ("Patient/85"), that patient is
	// the identity's patient.
	FHIRUser string `yaml:"fhir_user"`
}

var knownAlgs = []string{"RS256", "ES256", "HS256"}

func (c *JWTConfig) setDefaults() {
	if c.JWKSRefresh == 0 {
		c.JWKSRefresh = time.Hour
	}
	if c.Leeway == 0 {
		c.Leeway = 30 * time.Second
	}
	if c.Claims.User == "" {
		c.Claims.User = "sub"
	}
	if c.Claims.Role == "" {
		c.Claims.Role = "role"
	}
	if c.Claims.Scopes == "" {
		c.Claims.Scopes = "scope"
	}
	if c.Claims.Patient == "" {
		c.Claims.Patient = "patient"
	}
	if c.Claims.FHIRUser == "" {
		c.Claims.FHIRUser = "fhirUser"
	}
	if c.DefaultRole == "" {
		c.DefaultRole = "user"
	}
	if len(c.Algorithms) == 0 {
		if c.JWKSFile != "" || c.JWKSURL != "" {
			c.Algorithms = append(c.Algorithms, "RS256", "ES256")
		}
		if c.HS256Secret != "" || c.HS256SecretFile != "" {
			c.Algorithms = append(c.Algorithms, "HS256")
		}
	}
}

func (c *JWTConfig) validate() []error {
	var errs []error
	if c.Issuer == "" {
		errs = append(errs, gateway.FieldErrorf("jwt.issuer", "required"))
	}
	if c.Audience == "" {
		errs = append(errs, gateway.FieldErrorf("jwt.audience", "required"))
	}
	if c.JWKSFile != "" && c.JWKSURL != "" {
		errs = append(errs, gateway.FieldErrorf("jwt.jwks_url", "set only one of jwks_file and jwks_url"))
	}
	if c.HS256Secret != "" && c.HS256SecretFile != "" {
		errs = append(errs, gateway.FieldErrorf("jwt.hs256_secret_file", "set only one of hs256_secret and hs256_secret_file"))
	}
	if c.HS256Secret != "" && len(c.HS256Secret) < 32 {
		errs = append(errs, gateway.FieldErrorf("jwt.hs256_secret", "must be at least 32 bytes"))
	}
	if c.JWKSURL != "" && !strings.HasPrefix(c.JWKSURL, "https://") && !strings.HasPrefix(c.JWKSURL, "http://") {
		errs = append(errs, gateway.FieldErrorf("jwt.jwks_url", "must be an http(s) URL"))
	}
	hasKeys := c.JWKSFile != "" || c.JWKSURL != ""
	hasSecret := c.HS256Secret != "" || c.HS256SecretFile != ""
	for i, a := range c.Algorithms {
		key := fmt.Sprintf("jwt.algorithms[%d]", i)
		switch {
		case !slices.Contains(knownAlgs, a):
			errs = append(errs, gateway.FieldErrorf(key, "unsupported algorithm %q (supported: %s)", a, strings.Join(knownAlgs, ", ")))
		case a == "HS256" && !hasSecret:
			errs = append(errs, gateway.FieldErrorf(key, "HS256 needs hs256_secret or hs256_secret_file"))
		case a != "HS256" && !hasKeys:
			errs = append(errs, gateway.FieldErrorf(key, "%s needs jwks_file or jwks_url", a))
		}
	}
	if len(c.Algorithms) == 0 {
		errs = append(errs, gateway.FieldErrorf("jwt", "no keys: set jwks_file, jwks_url or hs256_secret"))
	}
	if c.JWKSRefresh < time.Minute {
		errs = append(errs, gateway.FieldErrorf("jwt.jwks_refresh", "must be at least 1m"))
	}
	return errs
}

// verifier checks JWTs and maps their claims to an identity.
type verifier struct {
	cfg    JWTConfig
	parser *jwt.Parser
	jwks   keyfunc.Keyfunc // nil without a JWKS
	secret []byte
	roles  []string
	cancel context.CancelFunc
}

// newVerifier builds the JWT verifier. now replaces time.Now for exp, nbf
// and iat (tests); nil means time.Now.
func newVerifier(cfg JWTConfig, roles []string, now func() time.Time, logger *slog.Logger) (*verifier, error) {
	v := &verifier{cfg: cfg, roles: roles, cancel: func() {}}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(cfg.Algorithms),
		jwt.WithIssuer(cfg.Issuer),
		jwt.WithAudience(cfg.Audience),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	}
	if now != nil {
		opts = append(opts, jwt.WithTimeFunc(now))
	}
	v.parser = jwt.NewParser(opts...)
	switch {
	case cfg.HS256Secret != "":
		v.secret = []byte(cfg.HS256Secret)
	case cfg.HS256SecretFile != "":
		b, err := os.ReadFile(cfg.HS256SecretFile)
		if err != nil {
			return nil, fmt.Errorf("read hs256_secret_file: %w", err)
		}
		v.secret = []byte(strings.TrimSpace(string(b)))
		if len(v.secret) < 32 {
			return nil, errors.New("hs256_secret_file: the secret must be at least 32 bytes")
		}
	}
	switch {
	case cfg.JWKSFile != "":
		b, err := os.ReadFile(cfg.JWKSFile)
		if err != nil {
			return nil, fmt.Errorf("read jwks_file: %w", err)
		}
		if v.jwks, err = keyfunc.NewJWKSetJSON(json.RawMessage(b)); err != nil {
			return nil, fmt.Errorf("jwks_file %s: %w", cfg.JWKSFile, err)
		}
	case cfg.JWKSURL != "":
		ctx, cancel := context.WithCancel(context.Background())
		kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.JWKSURL}, keyfunc.Override{
			RefreshInterval: cfg.JWKSRefresh,
			HTTPTimeout:     10 * time.Second,
			RefreshErrorHandlerFunc: func(u string) func(ctx context.Context, err error) {
				return func(ctx context.Context, err error) {
					logger.Warn("fetch JWKS failed; keeping the keys already known", "url", u, "error", err)
				}
			},
		})
		if err != nil {
			cancel()
			return nil, fmt.Errorf("jwks_url: %w", err)
		}
		v.jwks, v.cancel = kf, cancel
	}
	return v, nil
}

func (v *verifier) close() { v.cancel() }

// keyFor returns the verification key for the token's algorithm, of the
// type that algorithm needs: an HMAC secret is never used to check an RSA
// or ECDSA signature, and a public key never as an HMAC secret.
func (v *verifier) keyFor(ctx context.Context) jwt.Keyfunc {
	return func(t *jwt.Token) (any, error) {
		switch t.Method.Alg() {
		case "HS256":
			if v.secret == nil {
				return nil, errors.New("HS256 is not configured")
			}
			return v.secret, nil
		case "RS256", "ES256":
			if v.jwks == nil {
				return nil, errors.New("no JWKS configured")
			}
			k, err := v.jwks.KeyfuncCtx(ctx)(t)
			if err != nil {
				return nil, err
			}
			switch k.(type) {
			case *rsa.PublicKey:
				if t.Method.Alg() != "RS256" {
					return nil, errors.New("key type does not match the algorithm")
				}
			case *ecdsa.PublicKey:
				if t.Method.Alg() != "ES256" {
					return nil, errors.New("key type does not match the algorithm")
				}
			default:
				return nil, errors.New("key type does not match the algorithm")
			}
			return k, nil
		}
		return nil, fmt.Errorf("algorithm %q is not accepted", t.Method.Alg())
	}
}

// verify checks a token and returns the identity it carries and its
// expiry. Errors say why, without echoing the token.
func (v *verifier) verify(ctx context.Context, token string) (*gateway.Identity, time.Time, error) {
	claims := jwt.MapClaims{}
	t, err := v.parser.ParseWithClaims(token, claims, v.keyFor(ctx))
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("invalid token: %w", err)
	}
	if !t.Valid {
		return nil, time.Time{}, errors.New("invalid token")
	}
	id := &gateway.Identity{Method: "jwt"}
	id.UserID, _ = claimPath(claims, v.cfg.Claims.User).(string)
	if id.UserID == "" {
		return nil, time.Time{}, fmt.Errorf("invalid token: no %q claim", v.cfg.Claims.User)
	}
	id.Role = v.role(claimPath(claims, v.cfg.Claims.Role))
	id.Scopes = stringsOf(claimPath(claims, v.cfg.Claims.Scopes))
	id.PatientID, _ = claimPath(claims, v.cfg.Claims.Patient).(string)
	id.FHIRUser, _ = claimPath(claims, v.cfg.Claims.FHIRUser).(string)
	id.PatientID = patientOf(id.PatientID, id.FHIRUser)
	exp, _ := claims.GetExpirationTime()
	return id, exp.Time, nil
}

func (v *verifier) role(c any) string {
	switch r := c.(type) {
	case string:
		if r != "" {
			return r
		}
	case []any:
		for _, x := range r {
			if s, ok := x.(string); ok && slices.Contains(v.roles, s) {
				return s
			}
		}
		if len(r) > 0 {
			if s, ok := r[0].(string); ok {
				return s
			}
		}
	}
	return v.cfg.DefaultRole
}

// claimPath looks up a dotted claim name.
func claimPath(claims map[string]any, path string) any {
	var cur any = claims
	for _, part := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[part]
	}
	return cur
}

func stringsOf(c any) []string {
	switch s := c.(type) {
	case string:
		return strings.Fields(s)
	case []any:
		var out []string
		for _, x := range s {
			if v, ok := x.(string); ok {
				out = append(out, v)
			}
		}
		return out
	}
	return nil
}
