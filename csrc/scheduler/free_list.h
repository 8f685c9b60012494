// Intrusive doubly linked list over block ids 0..capacity-1: O(1) push_back, pop_front and
// removal from the middle (a cached free block is revived by a prefix hit). Front = the block
// freed longest ago, so allocation evicts the least recently used cached content first.
#pragma once

#include <cstdint>
#include <vector>

namespace editx::sched {

class FreeList {
 public:
  explicit FreeList(int32_t capacity) : prev_(capacity, -1), next_(capacity, -1), linked_(capacity, 0) {}

  int32_t size() const { return size_; }
  bool contains(int32_t id) const { return linked_[id] != 0; }
  int32_t front() const { return head_; }
  int32_t next(int32_t id) const { return next_[id]; }

  void push_back(int32_t id) {
    prev_[id] = tail_;
    next_[id] = -1;
    if (tail_ >= 0) next_[tail_] = id; else head_ = id;
    tail_ = id;
    linked_[id] = 1;
    ++size_;
  }

  void remove(int32_t id) {
    const int32_t p = prev_[id], n = next_[id];
    if (p >= 0) next_[p] = n; else head_ = n;
    if (n >= 0) prev_[n] = p; else tail_ = p;
    linked_[id] = 0;
    --size_;
  }

  int32_t pop_front() {
    const int32_t id = head_;
    remove(id);
    return id;
  }

 private:
  std::vector<int32_t> prev_, next_;
  std::vector<uint8_t> linked_;
  int32_t head_ = -1, tail_ = -1, size_ = 0;
};

}  // namespace editx::sched
