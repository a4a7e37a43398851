"""Does `bench tasks`' fusion win because a chunk's fused context is simply the text before it in the prompt?
For every non-first paragraph of the first N HotpotQA examples of a split: how often its nearest embedding
neighbour (blend/fusion.py, the example's paragraphs as the corpus) is the paragraph just before it, and how
often its fused context is exactly the two paragraphs before it, in prompt order (then its KV would be exact).

python benchmarks/fusion_neighbour_order.py dev 30
"""
import sys

from chunkcache.bench.tasks.suites import get_suite, load_suite
from chunkcache.blend.fusion import FUSION_NEIGHBOURS, neighbours
from chunkcache.retrieval.embedder import Embedder

split, limit = sys.argv[1], int(sys.argv[2])
embedder = Embedder()
total = previous = exact = earlier = 0
for ex in load_suite(get_suite("hotpotqa"), split, limit):
    near = neighbours(embedder.encode(list(ex.chunks)), FUSION_NEIGHBOURS)
    for i in range(1, len(ex.chunks)):
        total += 1
        previous += near[i][0] == i - 1
        exact += near[i] == [i - 1, i - 2]  # nearest placed last, next to the chunk
        earlier += all(j < i for j in near[i])
print(f"{total} paragraphs: nearest neighbour = the one just before it {previous / total:.3f} "
      f"(chance {1 / 9:.3f}); fused context = exactly the two before it {exact / total:.3f}; "
      f"both neighbours earlier in the prompt {earlier / total:.3f}")
