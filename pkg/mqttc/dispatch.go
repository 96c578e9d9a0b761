package mqttc

import (
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// dispatcher runs Handlers off the goroutine that received the message. Messages are sharded
// by topic into a fixed number of FIFO queues, each drained by exactly one worker goroutine:
// messages of one topic are handled in the order they arrived, one at a time, and different
// topics in parallel.
//
// Backpressure, not loss: dispatch blocks while the shard's queue holds limit messages, so a
// slow handler slows down whoever delivers (mochi's reader goroutine of the publishing client,
// or paho's router and so the socket). Nothing is ever dropped while the dispatcher is open.
//
// Blocked callers are served first come, first served: a worker that frees a slot moves the
// first waiter's message into the queue itself, so a caller arriving later cannot take the
// slot. Without that handoff (a plain condition variable) the readers of busy publishers,
// whose next message is already waiting in the socket when they return, keep winning the
// freed slots, and under load one car can starve for longer than its publish timeout.
//
// Two exceptions let a queue grow past its limit, because blocking there could wait on itself:
//   - mayExceed: the message was published in-process (mochi's inline client), possibly by one
//     of our own workers, which would then wait for its own queue to drain;
//   - ackWaiters > 0: some caller of the paho client waits for an acknowledgement from the
//     broker. paho reads acknowledgements and deliveries on one goroutine, so while that
//     goroutine is blocked here no PUBACK or SUBACK can arrive (see paho.go).
//
// In both cases the excess is bounded by what arrives while the condition holds.
type dispatcher struct {
	shards     []*shard
	ackWaiters atomic.Int32
	log        *slog.Logger
	wg         sync.WaitGroup
	closeOnce  sync.Once
}

// job is one message for one handler.
type job struct {
	h   Handler
	m   Message
	ack func() // nil, or called once h has returned (SubscribeAckAfterHandler)
}

// waiter is a caller blocked on a full queue, holding the job it could not queue yet. ready
// receives nil once the job is queued, ErrClosed if it never will be.
type waiter struct {
	j     job
	ready chan error
}

// shard is a ring-buffer FIFO guarded by mu, with one worker.
type shard struct {
	mu       sync.Mutex
	notEmpty sync.Cond // the worker waits here
	ring     []job
	head     int
	n        int       // queued jobs
	limit    int       // callers block at n >= limit
	waiters  []*waiter // blocked callers, first come first
	idle     bool      // the worker waits for a job
	closed   bool
}

func newDispatcher(workers, queueSize int, log *slog.Logger) *dispatcher {
	if workers < 1 {
		workers = 1
	}
	if queueSize < 1 {
		queueSize = 1
	}
	d := &dispatcher{shards: make([]*shard, workers), log: log}
	for i := range d.shards {
		s := &shard{ring: make([]job, queueSize), limit: queueSize}
		s.notEmpty.L = &s.mu
		d.shards[i] = s
	}
	d.wg.Add(len(d.shards))
	for _, s := range d.shards {
		go d.work(s)
	}
	return d
}

// shardOf picks the shard of a topic: FNV-1a, so that one topic always lands on one worker.
func shardOf(topic string, n int) int {
	h := uint32(2166136261)
	for i := 0; i < len(topic); i++ {
		h ^= uint32(topic[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}

// dispatch queues m for h. It blocks while the topic's queue is full or others wait before it
// (unless mayExceed or an acknowledgement is awaited) and returns ErrClosed once the
// dispatcher is closed; the message is then not handled.
func (d *dispatcher) dispatch(h Handler, m Message, mayExceed bool) error {
	return d.dispatchJob(job{h: h, m: m}, mayExceed)
}

// dispatchJob is dispatch for a job that may carry an acknowledgement to send after it ran.
func (d *dispatcher) dispatchJob(j job, mayExceed bool) error {
	s := d.shards[shardOf(j.m.Topic, len(d.shards))]
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	// The ack check is under s.mu: beginAckWait increments before it takes s.mu to release
	// the waiters, so a caller either sees the increment or is released.
	if (s.n < s.limit && len(s.waiters) == 0) || mayExceed || d.ackWaiters.Load() > 0 {
		s.push(j)
		s.mu.Unlock()
		return nil
	}
	w := &waiter{j: j, ready: make(chan error, 1)}
	s.waiters = append(s.waiters, w)
	s.mu.Unlock()
	return <-w.ready
}

// push appends a job, growing the ring past limit if an overflow needs it. Caller holds s.mu.
func (s *shard) push(j job) {
	if s.n == len(s.ring) {
		s.resize(2 * len(s.ring))
	}
	s.ring[(s.head+s.n)%len(s.ring)] = j
	s.n++
	if s.idle {
		s.notEmpty.Signal()
	}
}

// admitWaiters queues the jobs of the first waiters while there is room, or of all of them
// when all is set. Caller holds s.mu.
func (s *shard) admitWaiters(all bool) {
	i := 0
	for ; i < len(s.waiters) && (all || s.n < s.limit); i++ {
		w := s.waiters[i]
		s.push(w.j)
		w.ready <- nil
		s.waiters[i] = nil
	}
	s.waiters = s.waiters[i:]
	if len(s.waiters) == 0 {
		s.waiters = nil // let a long line's backing array go
	}
}

// resize moves the queued jobs into a ring of the given capacity (>= n).
func (s *shard) resize(capacity int) {
	ring := make([]job, capacity)
	for i := 0; i < s.n; i++ {
		ring[i] = s.ring[(s.head+i)%len(s.ring)]
	}
	s.ring, s.head = ring, 0
}

// beginAckWait lets every queue grow past its limit until the matching endAckWait: the caller
// is about to wait for an acknowledgement that only a running receive path can deliver.
func (d *dispatcher) beginAckWait() {
	if d.ackWaiters.Add(1) != 1 {
		return
	}
	for _, s := range d.shards {
		s.mu.Lock()
		s.admitWaiters(true)
		s.mu.Unlock()
	}
}

func (d *dispatcher) endAckWait() { d.ackWaiters.Add(-1) }

// work is the worker of one shard. After close it drains what is queued, then returns.
func (d *dispatcher) work(s *shard) {
	defer d.wg.Done()
	for {
		s.mu.Lock()
		for s.n == 0 && !s.closed {
			s.idle = true
			s.notEmpty.Wait()
			s.idle = false
		}
		if s.n == 0 { // closed and drained
			s.mu.Unlock()
			return
		}
		j := s.ring[s.head]
		s.ring[s.head] = job{} // let the payload be collected
		s.head = (s.head + 1) % len(s.ring)
		s.n--
		s.admitWaiters(false) // hand the freed slot to the first in line
		if s.n == 0 && len(s.ring) > 2*s.limit {
			s.resize(s.limit) // give back what an overflow borrowed
		}
		s.mu.Unlock()
		d.run(j)
	}
}

// run calls one handler. A panicking handler is logged and the worker goes on: one malformed
// message from one car must not stop the handling of every other car's messages.
// A job's ack goes out after its handler, also after a panic (handling it again would panic
// again).
func (d *dispatcher) run(j job) {
	if j.ack != nil {
		defer j.ack()
	}
	defer func() {
		if r := recover(); r != nil {
			d.log.Error("mqtt handler panicked", "topic", j.m.Topic, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	j.h(j.m)
}

// close refuses new messages, releases blocked callers (they get ErrClosed), lets the workers
// handle what is already queued and waits for them. It must not be called from a handler.
func (d *dispatcher) close() {
	d.closeOnce.Do(func() {
		for _, s := range d.shards {
			s.mu.Lock()
			s.closed = true
			for _, w := range s.waiters {
				w.ready <- ErrClosed
			}
			s.waiters = nil
			s.notEmpty.Broadcast()
			s.mu.Unlock()
		}
	})
	d.wg.Wait()
}

// queued returns the number of queued messages per shard (for tests and diagnostics).
func (d *dispatcher) queued() []int {
	out := make([]int, len(d.shards))
	for i, s := range d.shards {
		s.mu.Lock()
		out[i] = s.n
		s.mu.Unlock()
	}
	return out
}
