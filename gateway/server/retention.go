package server

import (
	"context"
	"sync"
)

// startRetention runs the audit log's retention sweep and, on a shared store, the mover of its
// inbox (audit.Log.RunMover) until stopRetention.
func (g *Gateway) startRetention() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	g.retentionStop, g.retentionDone = cancel, done
	go func() {
		defer close(done)
		log := g.log.With("component", "audit")
		var wg sync.WaitGroup
		wg.Go(func() { g.audit.RunMover(ctx, log) })
		g.audit.RunRetention(ctx, g.cfg.Audit.Retention, g.clock, log)
		wg.Wait()
	}()
}

// stopRetention ends the sweep and the mover and waits for them (a sweep in progress stops
// between transactions).
func (g *Gateway) stopRetention() {
	if g.retentionStop != nil {
		g.retentionStop()
		<-g.retentionDone
	}
}
