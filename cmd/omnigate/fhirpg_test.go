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

// fhir copy from a SQLite store into PostgreSQL and back: the counts, a
// refused non-empty target until -force, a config file as the source, and
// no password in any output.
func TestFHIRCopyCommand(t *testing.T) {
	dir := t.TempDir()
	url := strings.Replace(pgtest.NewDatabase(t), "postgres://postgres@", "postgres://postgres:s3cret-pw@", 1)
	if !strings.Contains(url, "s3cret-pw") {
		t.Fatalf("unexpected test URL form %q", url)
	}
	srcCfg := filepath.Join(dir, "src.yaml")
	os.WriteFile(srcCfg, []byte("fhir:\n  validate: false\n  store: {path: "+filepath.Join(dir, "src.db")+"}\nroutes:\n  - fhir: true\n"), 0o600)
	bundle := filepath.Join(dir, "tx.json")
	os.WriteFile(bundle, []byte(`{"resourceType":"Bundle","type":"transaction","entry":[
		{"resource":{"resourceType":"Patient","id":"a"},"request":{"method":"PUT","url":"Patient/a"}},
		{"resource":{"resourceType":"Patient","id":"b"},"request":{"method":"PUT","url":"Patient/b"}}]}`), 0o644)
	del := filepath.Join(dir, "del.json")
	os.WriteFile(del, []byte(`{"resourceType":"Bundle","type":"transaction","entry":[
		{"request":{"method":"DELETE","url":"Patient/b"}},
		{"resource":{"resourceType":"Patient","id":"a","active":true},"request":{"method":"PUT","url":"Patient/a"}}]}`), 0o644)
	for _, f := range []string{bundle, del} {
		if code, out, errOut := runCLI("fhir", "import", "-config", srcCfg, "-quiet", f); code != 0 {
			t.Fatalf("import %s: exit %d\n%s%s", f, code, out, errOut)
		}
	}
	check := func(what string, code, want int, out, errOut, wantOut string) {
		t.Helper()
		if strings.Contains(out+errOut, "s3cret-pw") {
			t.Errorf("%s: the password is shown:\n%s%s", what, out, errOut)
		}
		if code != want || !strings.Contains(out+errOut, wantOut) {
			t.Errorf("%s: exit %d, want %d and %q\n%s%s", what, code, want, wantOut, out, errOut)
		}
	}
	code, out, errOut := runCLI("fhir", "copy", "-from", srcCfg, "-to", url)
	check("copy to PostgreSQL", code, 0, out, errOut, "copied 4 versions of 2 resources from "+filepath.Join(dir, "src.db")+" to postgres://postgres@")
	code, out, errOut = runCLI("fhir", "copy", "-from", "sqlite:"+filepath.Join(dir, "src.db"), "-to", url, "-quiet")
	check("copy into a non-empty target", code, 1, out, errOut, "add -force")
	code, out, errOut = runCLI("fhir", "copy", "-from", "sqlite:"+filepath.Join(dir, "src.db"), "-to", url, "-quiet", "-force")
	check("forced copy", code, 0, out, errOut, "copied 4 versions")
	back := filepath.Join(dir, "back.db")
	code, out, errOut = runCLI("fhir", "copy", "-from", url, "-to", "sqlite:"+back, "-quiet")
	check("copy back", code, 0, out, errOut, "copied 4 versions of 2 resources")
	backCfg := filepath.Join(dir, "back.yaml")
	os.WriteFile(backCfg, []byte("fhir:\n  validate: false\n  store: {path: "+back+"}\nroutes:\n  - fhir: true\n"), 0o600)
	code, out, errOut = runCLI("fhir", "check", "-config", backCfg)
	check("check the copy", code, 0, out, errOut, ", 4 versions")
	code, out, errOut = runCLI("fhir", "copy", "-from", "sqlite:", "-to", url)
	check("empty sqlite path", code, 2, out, errOut, "needs a file path")
	code, out, errOut = runCLI("fhir", "copy", "-from", url)
	check("no target", code, 2, out, errOut, "usage")
}
