"""The tiny assistant world: invented knowledge, prompts, a gold reward, and corpora for the demo."""
from tether.world.gold import Judgement, gold_reward, judge
from tether.world.knowledge import Knowledge, build_knowledge
from tether.world.prompts import CATEGORIES, Query, parse_prompt
from tether.world.world import World, WorldConfig

__all__ = ["CATEGORIES", "Judgement", "Knowledge", "Query", "World", "WorldConfig", "build_knowledge",
           "gold_reward", "judge", "parse_prompt"]
