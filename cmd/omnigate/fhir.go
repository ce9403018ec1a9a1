package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/omnigate/omnigate/builtin/fhir"
	"github.com/omnigate/omnigate/internal/plural"
)

const fhirUsage = "usage: omnigate fhir import [-config FILE] [-quiet] [-skip-validation] FILE... | omnigate fhir copy -from STORE -to STORE [-force] [-quiet] | omnigate fhir check [-config FILE] | omnigate fhir migrate [-config FILE] [-dry-run]"

// runFHIR runs "omnigate fhir import [-config FILE] FILE..." and
// "omnigate fhir check [-config FILE]".
func runFHIR(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, fhirUsage)
		return 2
	}
	switch args[0] {
	case "import":
		return runFHIRImport(ctx, args[1:], stdout, stderr)
	case "check":
		return runFHIRCheck(ctx, args[1:], stdout, stderr)
	case "migrate":
		return runFHIRMigrate(ctx, args[1:], stdout, stderr)
	case "copy":
		return runFHIRCopy(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintln(stderr, fhirUsage)
	return 2
}

// openFHIR opens the store the config file names.
func openFHIR(ctx context.Context, file string) (*fhir.Handler, *fhir.Config, error) {
	cfg, err := loadFHIRConfig(file)
	if err != nil {
		return nil, nil, err
	}
	h, err := fhir.Open(ctx, cfg, fhir.Options{})
	if err != nil {
		return nil, nil, err
	}
	return h, cfg, nil
}

// loadFHIRConfig reads the fhir section of the config file (or of the
// embedded default when file is "").
func loadFHIRConfig(file string) (*fhir.Config, error) {
	gcfg, err := loadConfig(file)
	if err != nil {
		return nil, err
	}
	return fhir.ConfigFrom(gcfg)
}

// newSQLiteFile returns the path of the SQLite store of cfg when that file
// does not exist yet ("" otherwise): an import that writes nothing into it
// removes it again, so that a failed first import leaves no empty store
// behind.
func newSQLiteFile(cfg *fhir.Config) string {
	if cfg.Store.Driver != "" && cfg.Store.Driver != "sqlite" || cfg.Store.Path == "" || cfg.Store.Path == ":memory:" {
		return ""
	}
	if _, err := os.Stat(cfg.Store.Path); !errors.Is(err, os.ErrNotExist) {
		return ""
	}
	return cfg.Store.Path
}

// runFHIRCheck reports the problems of the resources of the store (see
// fhir.Handler.Check): exit status 0 when there are none, 1 otherwise.
func runFHIRCheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fhir check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", os.Getenv(EnvConfig), "config file whose fhir.store is checked (default: $"+EnvConfig+", else the embedded default)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, fhirUsage)
		return 2
	}
	h, cfg, err := openFHIR(ctx, *file)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer h.Close()
	sum, err := h.Check(ctx, func(f fhir.Finding) { fmt.Fprintln(stdout, f) })
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "checked %s: %d resources, %d versions: %d rewritten strings, %d dangling references, %d unresolved references\n",
		cfg.Store.Describe(), sum.Resources, sum.Versions, sum.Findings[fhir.RewrittenString], sum.Findings[fhir.DanglingReference], sum.Findings[fhir.UnresolvedReference])
	if len(sum.Findings) > 0 {
		return 1
	}
	return 0
}

// runFHIRMigrate applies the PostgreSQL store's schema migrations, or with
// -dry-run lists those it would apply.
func runFHIRMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fhir migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", os.Getenv(EnvConfig), "config file whose fhir.store is migrated (default: $"+EnvConfig+", else the embedded default)")
	dry := fs.Bool("dry-run", false, "list the migrations the database lacks; apply none")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, fhirUsage)
		return 2
	}
	gcfg, err := loadConfig(*file)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	cfg, err := fhir.ConfigFrom(gcfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	names, err := fhir.MigrateStore(ctx, cfg, *dry)
	if err != nil {
		fmt.Fprintln(stderr, "omnigate fhir migrate:", err)
		return 1
	}
	verb := "applied"
	if *dry {
		verb = "would apply"
	}
	for _, n := range names {
		fmt.Fprintf(stdout, "%s %s\n", verb, n)
	}
	fmt.Fprintf(stdout, "%s: %s %d migrations\n", fhir.RedactURL(cfg.Store.DatabaseURL()), verb, len(names))
	return 0
}

// runFHIRCopy copies a whole store, every version of every resource, into
// another (see fhir.CopyStore).
func runFHIRCopy(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fhir copy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	from := fs.String("from", "", "the store copied: sqlite:PATH, a postgres:// URL, or a config file whose fhir.store is used")
	to := fs.String("to", "", "the store written, named as -from; created or migrated if needed")
	force := fs.Bool("force", false, "empty a target that holds resources first (default: refuse it)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 || *from == "" || *to == "" {
		fmt.Fprintln(stderr, "usage: omnigate fhir copy -from STORE -to STORE [-force] [-quiet]; STORE is sqlite:PATH, postgres://… or a config file")
		return 2
	}
	src, err := storeSpec(*from)
	if err != nil {
		fmt.Fprintln(stderr, "omnigate fhir copy: -from:", err)
		return 2
	}
	dst, err := storeSpec(*to)
	if err != nil {
		fmt.Fprintln(stderr, "omnigate fhir copy: -to:", err)
		return 2
	}
	opt := fhir.CopyOptions{Force: *force}
	var bar *progressbar.ProgressBar
	if !*quiet {
		opt.Progress = func(done, total int64) {
			if bar == nil {
				bar = progressbar.NewOptions64(total,
					progressbar.OptionSetWriter(stderr),
					progressbar.OptionSetDescription("copy"),
					progressbar.OptionShowCount(),
					progressbar.OptionSetItsString("versions"),
					progressbar.OptionShowIts(),
					progressbar.OptionThrottle(100*time.Millisecond),
					progressbar.OptionClearOnFinish(),
				)
			}
			bar.ChangeMax64(total)
			bar.Set64(done)
		}
	}
	start := time.Now()
	sum, err := fhir.CopyStore(ctx, src, dst, opt)
	if bar != nil {
		bar.Finish()
	}
	if errors.Is(err, fhir.ErrTargetNotEmpty) {
		fmt.Fprintf(stderr, "omnigate fhir copy: %s holds resources: copy into an empty store, or add -force to empty it first\n", dst.Describe())
		return 1
	}
	if err != nil {
		fmt.Fprintln(stderr, "omnigate fhir copy:", err)
		return 1
	}
	el := time.Since(start)
	fmt.Fprintf(stdout, "copied %d versions of %d resources from %s to %s in %s (%.0f versions/s)\n",
		sum.Versions, sum.Resources, src.Describe(), dst.Describe(), el.Round(time.Millisecond), float64(sum.Versions)/el.Seconds())
	return 0
}

// storeSpec returns the store a copy's -from or -to names: "sqlite:PATH",
// a postgres:// (or postgresql://) URL, or a config file whose fhir.store
// is used.
func storeSpec(spec string) (*fhir.StoreConfig, error) {
	switch {
	case strings.HasPrefix(spec, "sqlite:"):
		path := strings.TrimPrefix(spec, "sqlite:")
		if path == "" {
			return nil, errors.New("sqlite: needs a file path")
		}
		return &fhir.StoreConfig{Driver: "sqlite", Path: path}, nil
	case strings.HasPrefix(spec, "postgres://"), strings.HasPrefix(spec, "postgresql://"):
		return &fhir.StoreConfig{Driver: "postgres", URL: spec, IgnoreEnv: true}, nil
	}
	gcfg, err := loadConfig(spec)
	if err != nil {
		return nil, err
	}
	cfg, err := fhir.ConfigFrom(gcfg)
	if err != nil {
		return nil, err
	}
	return &cfg.Store, nil
}

// runFHIRImport loads files into the store.
func runFHIRImport(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fhir import", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", os.Getenv(EnvConfig), "config file whose fhir.store is loaded (default: $"+EnvConfig+", else the embedded default)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	skip := fs.Bool("skip-validation", false, "check resources against the JSON schema only, not against the StructureDefinitions and the profiles they declare")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *skip {
		ctx = fhir.SkipValidation(ctx)
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "omnigate fhir import: name at least one file (transaction or batch Bundles, or NDJSON)")
		return 2
	}
	cfg, err := loadFHIRConfig(*file)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fresh := newSQLiteFile(cfg)
	h, err := fhir.Open(ctx, cfg, fhir.Options{})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	closed := false
	defer func() {
		if !closed {
			h.Close()
		}
	}()
	start := time.Now()
	var total fhir.ImportSummary
	failedFiles := 0
	for _, name := range fs.Args() {
		sum, err := importFile(ctx, h, name, *quiet, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", name, err)
			failedFiles++
			continue
		}
		fmt.Fprintf(stdout, "%s: %d resources: %d created, %d updated, %d unchanged, %d failed\n",
			name, sum.Resources, sum.Created, sum.Updated, sum.Unchanged, sum.Failed)
		for _, e := range sum.Errors {
			fmt.Fprintf(stdout, "  %s\n", e)
		}
		total.Resources += sum.Resources
		total.Created += sum.Created
		total.Updated += sum.Updated
		total.Unchanged += sum.Unchanged
		total.Deleted += sum.Deleted
		total.Failed += sum.Failed
	}
	if fresh != "" && total.Created+total.Updated+total.Deleted == 0 {
		closed = true
		h.Close()
		for _, suffix := range []string{"", "-wal", "-shm", "-journal", ".lock"} {
			os.Remove(fresh + suffix)
		}
		fmt.Fprintf(stderr, "nothing was imported: the new store %s is removed again\n", fresh)
	}
	el := time.Since(start)
	fmt.Fprintf(stdout, "imported %s into %s in %s: %d resources (%.0f/s), %d created, %d updated, %d unchanged, %d failed\n",
		plural.Of(len(fs.Args())-failedFiles, "file"), cfg.Store.Describe(), el.Round(time.Millisecond), total.Resources,
		float64(total.Resources)/el.Seconds(), total.Created, total.Updated, total.Unchanged, total.Failed)
	if failedFiles > 0 || total.Failed > 0 {
		return 1
	}
	return 0
}

func importFile(ctx context.Context, h *fhir.Handler, name string, quiet bool, stderr io.Writer) (fhir.ImportSummary, error) {
	f, err := os.Open(name)
	if err != nil {
		return fhir.ImportSummary{}, err
	}
	defer f.Close()
	var progress func(fhir.ImportProgress)
	if !quiet {
		// Counted in resources, with their rate: the bytes are read in a
		// moment, the work is in the resources. The total is known once a
		// Bundle's head is read; NDJSON's at its end.
		bar := progressbar.NewOptions64(-1,
			progressbar.OptionSetWriter(stderr),
			progressbar.OptionSetDescription(name),
			progressbar.OptionSetItsString("resources"),
			progressbar.OptionShowIts(),
			progressbar.OptionShowCount(),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(stderr) }),
		)
		var last fhir.ImportProgress
		defer func() {
			if last.Total == 0 {
				bar.ChangeMax64(int64(max(last.Done, 1)))
			}
			bar.Finish() // 100%
		}()
		progress = func(p fhir.ImportProgress) {
			if p.Total > 0 && int64(p.Total) != bar.GetMax64() {
				bar.ChangeMax64(int64(p.Total))
			}
			if p.Done != last.Done {
				bar.Set64(int64(p.Done))
			}
			last = p
		}
	}
	return h.Import(ctx, f, progress)
}
