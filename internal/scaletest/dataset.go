package scaletest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// dataset is the seeded resources the simulated users work on: patients
// with their observations, and one Patient per instance that the
// invalidation probes write. Every name in it is synthetic.
type dataset struct {
	base     string     // the FHIR base path, e.g. /fhir/R4
	patients []string   // Patient ids
	obs      [][]string // Observation ids, per patient
	probes   []string   // Patient ids, one per instance
}

const obsPerPatient = 3

// staticDataset names every resource itself (st-p1, st-o1-1, …), for a
// server that creates resources by PUT.
func staticDataset(patients, probes int) *dataset {
	ds := &dataset{base: "/fhir/R4"}
	for i := 1; i <= patients; i++ {
		ds.patients = append(ds.patients, "st-p"+strconv.Itoa(i))
		var obs []string
		for j := 1; j <= obsPerPatient; j++ {
			obs = append(obs, fmt.Sprintf("st-o%d-%d", i, j))
		}
		ds.obs = append(ds.obs, obs)
	}
	for i := 1; i <= probes; i++ {
		ds.probes = append(ds.probes, "st-probe-"+strconv.Itoa(i))
	}
	return ds
}

type bundleEntry struct {
	FullURL  string            `json:"fullUrl,omitempty"`
	Resource map[string]any    `json:"resource"`
	Request  map[string]string `json:"request"`
}

// putBundle is a transaction that writes the static dataset by PUT.
func (ds *dataset) putBundle() []byte {
	var entries []bundleEntry
	put := func(r map[string]any) {
		entries = append(entries, bundleEntry{Resource: r, Request: map[string]string{"method": "PUT", "url": r["resourceType"].(string) + "/" + r["id"].(string)}})
	}
	for i, p := range ds.patients {
		put(patientResource(p, "Synthetic"+strconv.Itoa(i+1)))
		for j, id := range ds.obs[i] {
			o := observation("Patient/"+p, 60+i%40+j)
			o["id"] = id
			put(o)
		}
	}
	for _, p := range ds.probes {
		put(patientResource(p, "v0"))
	}
	b, _ := json.Marshal(map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": entries})
	return b
}

func uuid() string {
	var b [16]byte
	rand.Read(b[:])
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("urn:uuid:%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// seedServer creates the dataset on a FHIR server with one transaction of
// POSTs (the server chooses the ids; observations refer to their patient
// by its fullUrl) and learns the ids from the transaction-response.
func seedServer(ctx context.Context, server, base string, patients, probes int) (*dataset, error) {
	var entries []bundleEntry
	post := func(r map[string]any, fullURL string) {
		entries = append(entries, bundleEntry{FullURL: fullURL, Resource: r, Request: map[string]string{"method": "POST", "url": r["resourceType"].(string)}})
	}
	for i := range patients {
		ref := uuid()
		post(patientResource("", "Synthetic"+strconv.Itoa(i+1)), ref)
		for j := range obsPerPatient {
			post(observation(ref, 60+i%40+j), uuid())
		}
	}
	for range probes {
		post(patientResource("", "v0"), uuid())
	}
	body, _ := json.Marshal(map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": entries})
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, server+base, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/fhir+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("seed the FHIR server: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("seed the FHIR server: status %d: %.500s", resp.StatusCode, b)
	}
	var out struct {
		Entry []struct {
			Response struct {
				Location string `json:"location"`
			} `json:"response"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(b, &out); err != nil || len(out.Entry) != len(entries) {
		return nil, fmt.Errorf("seed the FHIR server: unexpected transaction-response (%d of %d entries): %v", len(out.Entry), len(entries), err)
	}
	ids := make([]string, len(entries))
	for i, e := range out.Entry {
		// Location is [base/]Type/id[/_history/n].
		parts := strings.Split(strings.TrimPrefix(e.Response.Location, server+base+"/"), "/")
		for k := 0; k+1 < len(parts); k++ {
			if parts[k] == entries[i].Resource["resourceType"] {
				ids[i] = parts[k+1]
				break
			}
		}
		if ids[i] == "" {
			return nil, fmt.Errorf("seed the FHIR server: entry %d: no id in location %q", i, e.Response.Location)
		}
	}
	ds := &dataset{base: base}
	k := 0
	for range patients {
		ds.patients = append(ds.patients, ids[k])
		ds.obs = append(ds.obs, ids[k+1:k+1+obsPerPatient])
		k += 1 + obsPerPatient
	}
	ds.probes = ids[k:]
	if len(ds.probes) != probes {
		return nil, errors.New("seed the FHIR server: probe patients missing")
	}
	return ds, nil
}
