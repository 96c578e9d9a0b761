package etcdkv

// Hooks for the cache's tests (package etcdkv_test).

// PauseCache stops s's cache from applying watch events, so that it falls behind, until
// resume is called. The Store's own commits still go into it.
func (s *Store) PauseCache() (resume func()) {
	s.cache.hold.Lock()
	return s.cache.hold.Unlock
}

// BreakCacheWatch ends the cache's current watches, as a compaction or a lost leader does.
func (s *Store) BreakCacheWatch() {
	s.cache.mu.RLock()
	stop := s.cache.stopWatch
	s.cache.mu.RUnlock()
	if stop != nil {
		stop()
	}
}

// CacheDone is closed once the cache's goroutine has ended.
func (s *Store) CacheDone() <-chan struct{} { return s.cache.done }
