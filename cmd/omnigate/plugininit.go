package main

import (
	"bytes"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"text/template"
)

// pluginTemplates are the skeletons of "omnigate plugin init", a folder per
// language; common.tmpl holds templates they share.
//
//go:embed plugintmpl
var pluginTemplates embed.FS

// pluginLangs are the languages of "plugin init", with the SDK modules
// each depends on.
var pluginLangs = map[string][]string{
	"go":             {"github.com/omnigate/omnigate", "github.com/omnigate/omnigate/sdk/wasm"},
	"external":       {"github.com/omnigate/omnigate/sdk/external"},
	"assemblyscript": nil,
}

// sdkTags name the planned release tags of the repository's modules.
var sdkTags = map[string]struct{ sub, tag string }{
	"github.com/omnigate/omnigate":              {"", "v0.x.y"},
	"github.com/omnigate/omnigate/sdk/wasm":     {"/sdk/wasm", "sdk/wasm/v0.x.y"},
	"github.com/omnigate/omnigate/sdk/external": {"/sdk/external", "sdk/external/v0.x.y"},
}

// pluginName is what a plugin may be called: it names its folder, its
// module and its binary.
var pluginName = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

type replaceLine struct{ Module, Dir, Sub, Tag string }

type skeleton struct {
	Name, Module, Version string
	// SDK is a checkout of the omnigate repository to replace the SDK
	// modules with; "" leaves the replace commented out.
	SDK      string
	Replaces []replaceLine
}

func runPluginInit(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("plugin init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	lang := fs.String("lang", "go", "go (Wasm, Go guest), assemblyscript (Wasm) or external (go-plugin process)")
	dir := fs.String("dir", "", "where to write it (default ./NAME); must not exist or be empty")
	module := fs.String("module", "", "Go module path (default NAME)")
	sdk := fs.String("sdk", "", "a checkout of the omnigate repository to replace the SDK modules with, until they are tagged")
	// Flags may follow the name.
	var name string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if name == "" && fs.NArg() == 1 {
		name = fs.Arg(0)
	} else if fs.NArg() != 0 || name == "" {
		fmt.Fprintln(stderr, pluginUsage)
		return 2
	}
	if !pluginName.MatchString(name) {
		fmt.Fprintf(stderr, "omnigate plugin init: name %q: use lower-case letters, digits and '-', starting with a letter\n", name)
		return 2
	}
	if _, ok := pluginLangs[*lang]; !ok {
		fmt.Fprintf(stderr, "omnigate plugin init: -lang %q: go, assemblyscript or external\n", *lang)
		return 2
	}
	if *dir == "" {
		*dir = name
	}
	if *module == "" {
		*module = name
	}
	sk := skeleton{Name: name, Module: *module, Version: "v0.0.0"}
	if *sdk != "" {
		abs, err := filepath.Abs(*sdk)
		if err == nil {
			_, err = os.Stat(filepath.Join(abs, "sdk", "wasm", "go.mod"))
		}
		if err != nil {
			fmt.Fprintf(stderr, "omnigate plugin init: -sdk %s is not a checkout of the omnigate repository: %v\n", *sdk, err)
			return 2
		}
		sk.SDK = abs
	}
	for _, m := range pluginLangs[*lang] {
		t := sdkTags[m]
		sk.Replaces = append(sk.Replaces, replaceLine{Module: m, Dir: sk.SDK + t.sub, Sub: t.sub, Tag: t.tag})
	}
	files, err := writeSkeleton(*dir, *lang, sk)
	if err != nil {
		fmt.Fprintln(stderr, "omnigate plugin init:", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s plugin %s in %s: %s\n", *lang, name, *dir, strings.Join(files, ", "))
	fmt.Fprintf(stdout, "next: cd %s && make test\n", *dir)
	return 0
}

// writeSkeleton renders the templates of lang into dir and returns the
// files written, relative to dir.
func writeSkeleton(dir, lang string, sk skeleton) ([]string, error) {
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return nil, fmt.Errorf("%s exists and is not empty", dir)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	common, err := template.ParseFS(pluginTemplates, "plugintmpl/common.tmpl")
	if err != nil {
		return nil, fmt.Errorf("parse templates: %w", err)
	}
	root := path.Join("plugintmpl", lang)
	var files []string
	err = fs.WalkDir(pluginTemplates, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		src, err := pluginTemplates.ReadFile(p)
		if err != nil {
			return err
		}
		t, err := template.Must(common.Clone()).New(p).Parse(string(src))
		if err != nil {
			return fmt.Errorf("parse %s: %w", p, err)
		}
		var b bytes.Buffer
		if err := t.Execute(&b, sk); err != nil {
			return fmt.Errorf("render %s: %w", p, err)
		}
		rel := strings.TrimSuffix(strings.TrimPrefix(p, root+"/"), ".tmpl")
		out := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(out, b.Bytes(), 0o644); err != nil {
			return err
		}
		files = append(files, rel)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("write skeleton: %w", err)
	}
	return files, nil
}
