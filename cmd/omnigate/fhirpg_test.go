package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/omnigate/omnigate/internal/pgtest"
)

// With fhir.store on PostgreSQL: migrate -dry-run lists the migrations and
// applies none, migrate applies them once, import loads into the
// database, and no command prints the password.
func TestFHIRMigrateAndImportOnPostgres(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	// A password the server does not check (trust), to see that no output
	// shows it.
	withPassword := strings.Replace(url, "postgres://postgres@", "postgres://postgres:s3cret-pw@", 1)
	if withPassword == url {
		t.Fatalf("unexpected test URL form %q", url)
	}
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "omnigate.yaml")
	os.WriteFile(cfgFile, []byte("fhir:\n  store: {driver: postgres, url: \""+withPassword+"\"}\nroutes:\n  - name: fhir\n    fhir: true\n"), 0o600)
	check := func(out string) {
		t.Helper()
		if strings.Contains(out, "s3cret-pw") {
			t.Errorf("the password is shown:\n%s", out)
		}
	}

	code, out, errOut := runCLI("fhir", "migrate", "-config", cfgFile, "-dry-run")
	check(out + errOut)
	if code != 0 || !strings.Contains(out, "would apply 0001_init.sql") || !strings.Contains(out, "would apply 3 migrations") {
		t.Fatalf("dry run: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCLI("fhir", "migrate", "-config", cfgFile)
	check(out + errOut)
	if code != 0 || !strings.Contains(out, "applied 3 migrations") {
		t.Fatalf("migrate: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCLI("fhir", "migrate", "-config", cfgFile)
	if code != 0 || !strings.Contains(out, "applied 0 migrations") {
		t.Fatalf("migrate again: exit %d\n%s%s", code, out, errOut)
	}

	bundle := filepath.Join(dir, "tx.json")
	os.WriteFile(bundle, []byte(`{"resourceType":"Bundle","type":"transaction","entry":[
		{"fullUrl":"urn:uuid:1","resource":{"resourceType":"Patient","id":"c"},"request":{"method":"PUT","url":"Patient/c"}},
		{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"urn:uuid:1"}},"request":{"method":"POST","url":"Observation"}}]}`), 0o644)
	code, out, errOut = runCLI("fhir", "import", "-config", cfgFile, "-quiet", bundle)
	check(out + errOut)
	if code != 0 || !strings.Contains(out, "tx.json: 2 resources: 2 created") {
		t.Fatalf("import: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCLI("fhir", "check", "-config", cfgFile)
	check(out + errOut)
	if code != 0 || !strings.Contains(out, "2 resources") {
		t.Fatalf("check: exit %d\n%s%s", code, out, errOut)
	}

	// The migrate command refuses a SQLite store, which migrates itself.
	sqliteCfg := filepath.Join(dir, "sqlite.yaml")
	os.WriteFile(sqliteCfg, []byte("fhir:\n  store: {path: "+filepath.Join(dir, "s.db")+"}\nroutes:\n  - fhir: true\n"), 0o600)
	if code, out, errOut = runCLI("fhir", "migrate", "-config", sqliteCfg); code != 1 || !strings.Contains(errOut, "not postgres") {
		t.Errorf("migrate on sqlite: exit %d\n%s%s", code, out, errOut)
	}
}

// The store keys are validated with the config: errors name the key.
func TestFHIRStoreConfigErrors(t *testing.T) {
	t.Setenv("FHIR_DATABASE_URL", "")
	dir := t.TempDir()
	for _, c := range []struct{ store, want string }{
		{"{driver: mysql}", "store.driver"},
		{"{driver: postgres}", "store.url"},
		{"{driver: postgres, url: \"http://x\"}", "store.url"},
		{"{driver: postgres, url: \"postgres://h/db\", sslmode: sometimes}", "store.sslmode"},
		{"{driver: postgres, url: \"postgres://h/db\", ca_file: /nonexistent/ca.pem}", "store.ca_file"},
		{"{driver: postgres, url: \"postgres://h/db\", max_conns: -1}", "store.max_conns"},
	} {
		f := filepath.Join(dir, "c.yaml")
		os.WriteFile(f, []byte("fhir:\n  store: "+c.store+"\nroutes:\n  - fhir: true\n"), 0o600)
		code, out, errOut := runCLI("config", "check", f)
		if code == 0 || !strings.Contains(out+errOut, c.want) {
			t.Errorf("%s: exit %d, want an error naming %s\n%s%s", c.store, code, c.want, out, errOut)
		}
	}
	// FHIR_DATABASE_URL supplies the URL.
	t.Setenv("FHIR_DATABASE_URL", "postgres://h/db")
	f := filepath.Join(dir, "env.yaml")
	os.WriteFile(f, []byte("fhir:\n  store: {driver: postgres}\nroutes:\n  - fhir: true\n"), 0o600)
	if code, out, errOut := runCLI("config", "check", f); code != 0 {
		t.Errorf("url from FHIR_DATABASE_URL: exit %d\n%s%s", code, out, errOut)
	}
}
