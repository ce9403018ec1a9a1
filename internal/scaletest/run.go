package scaletest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// Run starts the fleet, drives the load, checks and stops everything. The
// report is returned even when checks failed (see Report.Failures); an
// error means the run itself could not be done.
func Run(ctx context.Context, opts Options) (*Report, error) {
	o := opts
	if err := o.setDefaults(); err != nil {
		return nil, fmt.Errorf("scaletest: %w", err)
	}
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", args...)
		}
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("scaletest: find the omnigate binary: %w", err)
		}
		o.Binary = exe
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "omnigate-scaletest-")
		if err != nil {
			return nil, fmt.Errorf("scaletest: %w", err)
		}
		defer os.RemoveAll(d)
		o.Dir = d
	} else if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("scaletest: %w", err)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("scaletest: %w", err)
	}

	// Everything started is stopped in reverse order, whatever happens.
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()

	var topo topology
	if o.Redis != RedisNone {
		logf("starting Redis (%s)", o.Redis)
		topo, err = startTopology(ctx, &o, dir)
		if err != nil {
			return nil, fmt.Errorf("scaletest: start redis: %w", err)
		}
		cleanups = append(cleanups, topo.close)
	}
	var pg *pgStore
	if o.Store == StorePostgres {
		logf("starting PostgreSQL")
		if pg, err = startStore(ctx, &o); err != nil {
			return nil, fmt.Errorf("scaletest: start postgres: %w", err)
		}
		cleanups = append(cleanups, pg.close)
	}
	patients := max(20, o.Patients)
	var ds *dataset
	upstream := ""
	extraPIDs := map[string]int{}
	if o.Backend == BackendUpstream {
		ds = staticDataset(patients, o.Instances)
		if o.Config != "" {
			if ds.base, err = userBase(&o); err != nil {
				return nil, fmt.Errorf("scaletest: %w", err)
			}
		}
		st, err := startStandIn(ds.putBundle(), ds.base)
		if err != nil {
			return nil, fmt.Errorf("scaletest: start the upstream stand-in: %w", err)
		}
		cleanups = append(cleanups, st.close)
		upstream = st.addr
	}
	storeURL := ""
	if pg != nil {
		storeURL = pg.url
	}
	if o.Backend == BackendFHIR {
		// With PostgreSQL the instances serve the data themselves: this
		// process only seeds the database (and migrates it), then stops.
		name := "fhir-origin"
		if pg != nil {
			name = "fhir-seed"
		}
		logf("starting the FHIR server (%s)", name)
		var cfg, base string
		if o.Config != "" {
			cfg, base, err = userOrigin(&o, dir)
		} else {
			cfg, err = writeOriginConfig(dir, !o.NoSchemaValidation, storeURL)
			base = "/fhir/R4"
		}
		if err != nil {
			return nil, fmt.Errorf("scaletest: %w", err)
		}
		origin, err := startInstance(ctx, &o, -1, name, cfg, dir, false)
		if err != nil {
			return nil, fmt.Errorf("scaletest: %w", err)
		}
		cleanups = append(cleanups, origin.stop)
		logf("loading %d patients with their observations", patients)
		if ds, err = seedServer(ctx, origin.base(), base, patients, o.Instances); err != nil {
			return nil, fmt.Errorf("scaletest: %w", err)
		}
		if pg != nil {
			origin.stop()
		} else {
			upstream = origin.base()
			extraPIDs["fhir-origin"] = origin.pid()
		}
	}
	redisYAML := ""
	if topo != nil {
		redisYAML = topo.yaml()
	}
	var cfg string
	if o.Config != "" {
		cfg, err = userFleet(&o, dir, redisYAML, upstream)
	} else {
		cfg, err = writeConfig(dir, &o, redisYAML, upstream, storeURL)
	}
	if err != nil {
		return nil, fmt.Errorf("scaletest: write config: %w", err)
	}
	o.outageBound, err = outageStalenessBound(cfg)
	if err != nil {
		return nil, fmt.Errorf("scaletest: %w", err)
	}
	users, probeUser, witnesses, err := makeUsers(filepath.Join(dir, "users.yaml"), &o, ds)
	if err != nil {
		return nil, fmt.Errorf("scaletest: write users: %w", err)
	}

	logf("starting %d gateway instances", o.Instances)
	insts := make([]*instance, o.Instances)
	var mu sync.Mutex
	var startErrs []error
	var wg sync.WaitGroup
	for i := range insts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in, err := startInstance(ctx, &o, i, fmt.Sprintf("instance-%d", i+1), cfg, dir, topo != nil)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				startErrs = append(startErrs, err)
				return
			}
			insts[i] = in
			cleanups = append(cleanups, in.stop)
		}()
	}
	wg.Wait()
	if len(startErrs) > 0 {
		return nil, fmt.Errorf("scaletest: %w", errors.Join(startErrs...))
	}
	topoDesc := "none (in-process state)"
	if topo != nil {
		topoDesc = topo.describe()
	}
	return drive(ctx, &o, topo, topoDesc, pg, insts, extraPIDs, users, probeUser, witnesses, ds, logf)
}

// drive runs the load, the probes, the Redis failover and the store
// restart, then the final checks.
func drive(ctx context.Context, o *Options, topo topology, topoDesc string, pg *pgStore, insts []*instance, extraPIDs map[string]int,
	users []*user, probeUser *user, witnesses []*user, ds *dataset, logf func(string, ...any)) (*Report, error) {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: len(users) + 8, IdleConnTimeout: 30 * time.Second}
	defer tr.CloseIdleConnections()
	rec := &recorder{policyIdx: map[string]int16{}}
	c := &client{rec: rec, insts: insts, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}, acks: &ackBook{}}
	book := &sessionBook{keep: 3, tokens: map[int][]token{}}
	pr := &prober{c: c, u: probeUser, o: o, ds: ds}
	pings := make([]*pingLog, len(insts))
	for i := range pings {
		pings[i] = &pingLog{}
	}
	var storePings []*pingLog
	if pg != nil {
		storePings = make([]*pingLog, len(insts))
		for i := range storePings {
			storePings[i] = &pingLog{}
		}
	}
	procs := &sampler{series: map[string][]procSample{}, trees: map[string]bool{"postgres": true}}
	sl := &storeLog{}
	fo := &failoverLog{}
	var foMu sync.Mutex
	pids := func() map[string]int {
		m := map[string]int{}
		for _, in := range insts {
			m[fmt.Sprintf("instance %d", in.idx+1)] = in.pid()
		}
		for k, v := range extraPIDs {
			m[k] = v
		}
		if pg != nil {
			m["postgres"] = pg.pid()
		}
		if topo != nil {
			foMu.Lock()
			for k, v := range topo.pids() {
				m[k] = v
			}
			foMu.Unlock()
		}
		return m
	}

	logf("load: %d users for %s%s", len(users), o.Duration, budgetNote(o.Requests))
	load0 := loadAvg()
	rec.start = time.Now()
	loadCtx, stopLoad := context.WithTimeout(ctx, o.Duration)
	defer stopLoad()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var bg sync.WaitGroup
	bg.Add(2)
	go func() { defer bg.Done(); watch(watchCtx, insts, rec.start, pings, storePings) }()
	go func() { defer bg.Done(); procs.run(watchCtx, rec.start, time.Second, pids) }()

	foDone := make(chan struct{})
	go func() {
		defer close(foDone)
		if o.NoFailover || topo == nil {
			return
		}
		if !sleepUntil(loadCtx, rec.start.Add(o.StopAt)) {
			return
		}
		foMu.Lock()
		fo.stopAt, fo.stopped = time.Since(rec.start), true
		foMu.Unlock()
		logf("\nfailover: stopping Redis at %s", ms(fo.stopAt))
		msg, err := topo.stop(ctx)
		foMu.Lock()
		fo.stopMsg, fo.err = msg, err
		foMu.Unlock()
		sleepUntil(loadCtx, rec.start.Add(o.RestartAt))
		restart(ctx, topo, fo, &foMu, rec.start, logf)
	}()

	storeDone := make(chan struct{})
	go func() {
		defer close(storeDone)
		if pg != nil {
			restartStore(ctx, loadCtx, o, pg, sl, rec.start, logf)
		}
	}()

	var userWG sync.WaitGroup
	for _, u := range users {
		userWG.Add(1)
		go func() {
			defer userWG.Done()
			rng := rand.New(rand.NewPCG(uint64(o.Seed), uint64(u.idx)))
			c.simulate(loadCtx, o, u, book, rng, ds)
		}()
	}
	probeDone := make(chan struct{})
	go func() { defer close(probeDone); pr.run(ctx, loadCtx) }()
	wit := &witnessLog{}
	witDone := make(chan struct{})
	go func() { defer close(witDone); wit.run(loadCtx, c, witnesses, rec.start, o.witnessFrom()) }()

	bar := newBar(o)
	barDone := make(chan struct{})
	go func() {
		defer close(barDone)
		progress(loadCtx, bar, o, rec, fo, &foMu)
	}()
	userWG.Wait()
	stopLoad() // the request budget may end the load before the duration
	<-barDone
	elapsed := time.Since(rec.start)
	load1 := loadAvg()
	logf("load done after %s; waiting for the last probe", ms(elapsed))
	<-probeDone
	<-witDone
	<-foDone
	<-storeDone
	if fo.stopped && !fo.restarted {
		restart(ctx, topo, fo, &foMu, rec.start, logf)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	// Let every instance get back on Redis before the final checks.
	if topo != nil {
		for _, in := range insts {
			in.waitReady(ctx, true, 30*time.Second)
		}
	}
	// And back on the store, after its restart.
	if pg != nil {
		for _, in := range insts {
			in.waitStore(ctx, 30*time.Second)
		}
	}
	checkCtx := context.WithoutCancel(ctx)
	rd := &runData{o: o, topo: topoDesc, outageBound: o.outageBound, elapsed: elapsed, rec: rec, users: users, book: book, prober: pr,
		pings: pings, fo: fo, procs: procs, loadAvg: [2]float64{load0, load1}}
	rd.sessCheck.checked, rd.sessCheck.valid, rd.sessCheck.failures = verifySessions(checkCtx, c, book)
	rd.witnesses = wit.verify(checkCtx, c)
	logf("reading back every acknowledged write")
	// Without a login the reads are refused, and counted missing.
	tok, err := loginAnywhere(checkCtx, c, probeUser)
	rd.writes, rd.acks = verifyWrites(checkCtx, c, tok, ds.base, c.acks), c.acks
	if err != nil {
		rd.writes.Problems = append(rd.writes.Problems, "no probe login for the check: "+err.Error())
	}
	if pg != nil {
		rd.store, rd.storePings, rd.storeDesc = sl, storePings, pg.describe()
		if o.NoStoreRestart {
			rd.storeDesc += "; the store restart was skipped (a given server is not stopped)"
		}
	}
	rd.metrics = scrapeMetrics(checkCtx, insts)
	stopWatch()
	bg.Wait()
	if !fo.stopped {
		rd.fo = nil
	}
	rep := analyze(rd)
	rep.Setup.CPUs = runtime.NumCPU()
	if err := writeSamples(filepath.Join(o.Dir, "samples.csv"), rec, users); err != nil {
		logf("write samples: %v", err)
	}
	return rep, nil
}

func restart(ctx context.Context, topo topology, fo *failoverLog, mu *sync.Mutex, start time.Time, logf func(string, ...any)) {
	at := time.Since(start)
	logf("failover: restarting Redis at %s", ms(at))
	msg, err := topo.restart(ctx)
	ready := time.Since(start)
	mu.Lock()
	defer mu.Unlock()
	fo.restartAt, fo.restarted = at, true
	fo.restMsg = fmt.Sprintf("%s (ready after %s)", msg, ms(ready-at))
	if err != nil && fo.err == nil {
		fo.err = err
	}
}

func budgetNote(n int64) string {
	if n > 0 {
		return fmt.Sprintf(" or %d requests", n)
	}
	return ""
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	sleep(ctx, time.Until(t))
	return ctx.Err() == nil
}

func newBar(o *Options) *progressbar.ProgressBar {
	if o.Progress == nil {
		return nil
	}
	return progressbar.NewOptions64(int64(o.Duration/time.Second),
		progressbar.OptionSetWriter(o.Progress),
		progressbar.OptionSetDescription("load"),
		progressbar.OptionSetWidth(30),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(o.Progress) }),
	)
}

// progress updates the bar every 250 ms with the elapsed seconds, the
// request rate, the 5xx count and the state of Redis.
func progress(ctx context.Context, bar *progressbar.ProgressBar, o *Options, rec *recorder, fo *failoverLog, mu *sync.Mutex) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	lastN, lastT := int64(0), time.Now()
	rate := 0.0
	for {
		select {
		case <-ctx.Done():
			if bar != nil {
				bar.Finish()
			}
			return
		case now := <-tick.C:
			if bar == nil {
				continue
			}
			n := rec.requests.Load()
			if dt := now.Sub(lastT).Seconds(); dt >= 1 {
				rate, lastN, lastT = float64(n-lastN)/dt, n, now
			}
			mu.Lock()
			redis := "redis up"
			if fo.stopped && !fo.restarted {
				redis = "redis STOPPED"
			}
			mu.Unlock()
			bar.Describe(fmt.Sprintf("%6.0f req/s  %d requests  5xx %d  %s", rate, n, rec.fiveXX.Load(), redis))
			bar.Set64(min(int64(time.Since(rec.start)/time.Second), int64(o.Duration/time.Second)))
		}
	}
}
