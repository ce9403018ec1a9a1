package profile

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Limits on what Load reads, against archives that unpack to far more
// than they weigh.
const (
	// maxFile is the largest JSON file Load reads (in a package too).
	maxFile = 64 << 20
	// maxPackage is the most a package's files may unpack to in all.
	maxPackage = 512 << 20
)

// Load reads the conformance resources of one FHIR package source: an
// NPM-style package (.tgz, its package/*.json files), a folder of JSON
// files, or one JSON file holding a resource, a Bundle or an array of
// resources. It keeps StructureDefinitions, ValueSets and CodeSystems and
// ignores the rest (examples, the package manifest, other resources).
func Load(path string) (*Resources, error) {
	res := &Resources{}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read package: %w", err)
	}
	switch {
	case fi.IsDir():
		err = loadDir(path, res)
	case strings.HasSuffix(path, ".tgz") || strings.HasSuffix(path, ".tar.gz"):
		var f *os.File
		if f, err = os.Open(path); err != nil {
			return nil, fmt.Errorf("read package: %w", err)
		}
		defer f.Close()
		err = LoadTarGz(f, res)
	default:
		var data []byte
		if data, err = readLimited(path); err == nil {
			err = Parse(data, res)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return res, nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFile {
		return nil, fmt.Errorf("larger than %d MiB", maxFile>>20)
	}
	return data, nil
}

func loadDir(dir string, res *Resources) error {
	names, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, n := range names {
		data, err := readLimited(n)
		if err != nil {
			return err
		}
		if err := Parse(data, res); err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(n), err)
		}
	}
	return nil
}

// LoadTarGz reads the JSON files of an NPM-style FHIR package (a gzip tar
// whose resources are package/*.json; package/other/ and
// package/example/ are skipped) into res.
func LoadTarGz(r io.Reader, res *Resources) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("not a gzip package: %w", err)
	}
	tr := tar.NewReader(zr)
	var total int64
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read package: %w", err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		dir, file := filepath.Split(name)
		if h.Typeflag != tar.TypeReg || dir != "package/" || !strings.HasSuffix(file, ".json") || file == "package.json" || file == ".index.json" {
			continue
		}
		if h.Size > maxFile {
			return fmt.Errorf("%s: larger than %d MiB", name, maxFile>>20)
		}
		if total += h.Size; total > maxPackage {
			return fmt.Errorf("package unpacks to more than %d MiB", maxPackage>>20)
		}
		data, err := io.ReadAll(io.LimitReader(tr, maxFile))
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		if err := Parse(data, res); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
}

// Parse reads one JSON document (a resource, a Bundle of resources, or an
// array of resources) and adds its conformance resources to res.
func Parse(data []byte, res *Resources) error {
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] == '[' {
		var arr []json.RawMessage
		if err := json.Unmarshal(data, &arr); err != nil {
			return fmt.Errorf("decode: %w", err)
		}
		for i, r := range arr {
			if err := parseResource(r, res, 0); err != nil {
				return fmt.Errorf("item %d: %w", i, err)
			}
		}
		return nil
	}
	return parseResource(data, res, 0)
}

func parseResource(raw []byte, res *Resources, depth int) error {
	var head struct {
		ResourceType string `json:"resourceType"`
		URL          string `json:"url"`
		Entry        []struct {
			Resource json.RawMessage `json:"resource"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	switch head.ResourceType {
	case "Bundle":
		if depth > 0 {
			return nil
		}
		for i, e := range head.Entry {
			if len(e.Resource) == 0 {
				continue
			}
			if err := parseResource(e.Resource, res, depth+1); err != nil {
				return fmt.Errorf("entry %d: %w", i, err)
			}
		}
	case "StructureDefinition":
		var sd StructureDefinition
		if err := json.Unmarshal(raw, &sd); err != nil {
			return fmt.Errorf("decode StructureDefinition %s: %w", head.URL, err)
		}
		if sd.URL == "" {
			return errors.New("a StructureDefinition without url")
		}
		if sd.Snapshot == nil || len(sd.Snapshot.Element) == 0 {
			res.Skipped = append(res.Skipped, sd.URL+": no snapshot (only snapshot profiles are supported)")
			return nil
		}
		res.Structures = append(res.Structures, &sd)
	case "ValueSet":
		var vs ValueSet
		if err := json.Unmarshal(raw, &vs); err != nil {
			return fmt.Errorf("decode ValueSet %s: %w", head.URL, err)
		}
		if vs.URL != "" {
			res.ValueSets = append(res.ValueSets, &vs)
		}
	case "CodeSystem":
		var cs CodeSystem
		if err := json.Unmarshal(raw, &cs); err != nil {
			return fmt.Errorf("decode CodeSystem %s: %w", head.URL, err)
		}
		if cs.URL != "" {
			res.CodeSystems = append(res.CodeSystems, &cs)
		}
	}
	return nil
}
