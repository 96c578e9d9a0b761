// Package groupcommit writes to bbolt with natural group commit: a writer goroutine commits
// every write waiting at that moment in one transaction (one fsync), and starts the next
// commit as soon as the previous one is done. An idle store commits a lone write at once,
// unlike db.Batch, which always waits MaxBatchDelay for company; a busy store shares each fsync
// among all the writers that arrived during the previous one.
package groupcommit

import (
	"errors"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrClosed is returned for writes submitted after Close.
var ErrClosed = errors.New("group commit closed")

// MaxGroup bounds how many writes share one transaction.
const MaxGroup = 1000

type write struct {
	fn   func(*bolt.Tx) error
	done chan error  // Update's, or nil
	then func(error) // Enqueue's, or nil
}

// finish hands the write its outcome.
func (w write) finish(err error) {
	if w.then != nil {
		w.then(err)
		return
	}
	w.done <- err
}

// Committer serializes writes to one bbolt file.
type Committer struct {
	db    *bolt.DB
	queue chan write
	once  sync.Once
	mu    sync.RWMutex
	quit  bool
	wg    sync.WaitGroup
}

// New starts a committer for db.
func New(db *bolt.DB) *Committer {
	c := &Committer{db: db, queue: make(chan write, MaxGroup)}
	c.wg.Add(1)
	go c.run()
	return c
}

// Update runs fn in a read-write transaction shared with other writers and returns once it is
// durable. fn may run more than once (when another write of its transaction fails, the others
// are run again without it, so that one failing write does not fail the others): keep it
// idempotent, as with db.Batch.
func (c *Committer) Update(fn func(*bolt.Tx) error) error {
	c.mu.RLock()
	if c.quit {
		c.mu.RUnlock()
		return ErrClosed
	}
	w := write{fn: fn, done: make(chan error, 1)}
	c.queue <- w
	c.mu.RUnlock()
	return <-w.done
}

// MaxLaterDelay bounds how long a write queued with Enqueue waits for an Update to share a
// commit with before it is committed without one.
const MaxLaterDelay = time.Second

// Enqueue queues fn and returns without waiting for it to commit (it waits only while MaxGroup
// writes are queued already): fn joins the next Update's commit, or is committed MaxLaterDelay
// after the first of the writes queued this way, whichever comes first, so that it costs no
// fsync of its own while Updates come at least that often. then, if not nil, is called with
// the outcome on the committing goroutine once the commit is durable or failed, and must be
// quick. fn is what Update takes. A write enqueued before Close is committed by Close; after
// Close, then gets ErrClosed at once. A crash loses what was enqueued and not yet committed.
func (c *Committer) Enqueue(fn func(*bolt.Tx) error, then func(error)) {
	if then == nil {
		then = func(error) {}
	}
	c.mu.RLock()
	if c.quit {
		c.mu.RUnlock()
		then(ErrClosed)
		return
	}
	c.queue <- write{fn: fn, then: then}
	c.mu.RUnlock()
}

func (c *Committer) run() {
	defer c.wg.Done()
	group := make([]write, 0, MaxGroup)
	// held are Enqueue's writes waiting for an Update to commit with, at most MaxLaterDelay
	// (laterC fires then; nil while nothing is held).
	var held []write
	later := time.NewTimer(MaxLaterDelay)
	later.Stop()
	defer later.Stop()
	var laterC <-chan time.Time
	for {
		var w write
		open := true
		select {
		case w, open = <-c.queue:
		case <-laterC:
			laterC = nil
			c.commit(held)
			held = held[:0]
			continue
		}
		if !open {
			if len(held) > 0 {
				c.commit(held)
			}
			return
		}
		group = append(append(group[:0], held...), w)
		waits := w.done != nil // an Update waits for this commit
	drain:
		for len(group) < MaxGroup {
			select {
			case w, ok := <-c.queue:
				if !ok {
					break drain
				}
				group = append(group, w)
				waits = waits || w.done != nil
			default:
				break drain
			}
		}
		if !waits && len(group) < MaxGroup {
			held = append(held[:0], group...)
			if laterC == nil {
				later.Reset(MaxLaterDelay)
				laterC = later.C
			}
			continue
		}
		held = held[:0]
		if laterC != nil {
			later.Stop()
			laterC = nil
		}
		c.commit(group)
	}
}

func (c *Committer) commit(group []write) {
	for {
		failed := -1
		err := c.db.Update(func(tx *bolt.Tx) error {
			for i, w := range group {
				if err := w.fn(tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		switch {
		case err == nil || len(group) == 1:
			for _, w := range group {
				w.finish(err)
			}
			return
		case failed < 0:
			// The commit itself failed (a full disk, an I/O error): each write alone, so that
			// each gets its own answer.
			for _, w := range group {
				w.finish(c.db.Update(w.fn))
			}
			return
		}
		// One write refused: it gets its error (as if it ran after the writes before it, which
		// the retry commits), and the others share one transaction again. A refusal rolls
		// back without an fsync, so a batch with a refusing write still costs one fsync, not
		// one per write.
		group[failed].finish(err)
		group = append(group[:failed], group[failed+1:]...)
		if len(group) == 0 {
			return
		}
	}
}

// Close waits for queued writes to commit and stops the writer; later writes get ErrClosed.
// It does not close the database.
func (c *Committer) Close() {
	c.once.Do(func() {
		c.mu.Lock()
		c.quit = true
		close(c.queue)
		c.mu.Unlock()
		c.wg.Wait()
	})
}
