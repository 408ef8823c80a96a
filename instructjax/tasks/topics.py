"""Everyday topics and request templates of the default task.

Every fourth topic (index % 4 == 3) is held out for the "test" split, so test prompts ask about
topics never seen in training or validation.
"""

from __future__ import annotations

# Each template takes a noun phrase as {topic}.
REQUESTS = (
    "Write a short paragraph about {topic}.",
    "Explain {topic} in simple terms.",
    "Explain why {topic} matters.",
    "Describe {topic} to someone who knows nothing about the subject.",
    "List a few interesting facts about {topic}.",
    "Summarise what a beginner should know about {topic}.",
    "Give me some advice about {topic}.",
    "What are the pros and cons of {topic}?",
    "Write a short note to a friend about {topic}.",
    "Write a short poem about {topic}.",
    "Tell me about a common misconception about {topic}.",
    "Compare {topic} today with how it was a hundred years ago.",
    "Give a short introduction to {topic} for a school newsletter.",
    "Suggest some questions a student could ask about {topic}.",
    "Write a very short story involving {topic}.",
    "Explain how {topic} affects everyday life.",
    "What is the most important thing to know about {topic}?",
    "Write the opening of a blog post about {topic}.",
    "Give a one-minute talk about {topic}.",
    "Describe a typical day that involves {topic}.",
    "Explain {topic} to a ten-year-old.",
    "Share some practical tips related to {topic}.",
)

TOPICS = (
    "learning a new language", "the water cycle", "saving money", "growing tomatoes", "public libraries",
    "morning routines", "electric cars", "honey bees", "volcanoes", "recycling plastic",
    "drinking enough water", "the moon", "chess", "baking bread", "rainforests",
    "video games", "solar panels", "sleep", "volunteering", "the printing press",
    "bicycles", "coffee", "time management", "whales", "public speaking",
    "the internet", "camping", "vaccines", "board games", "composting",
    "the Roman Empire", "meditation", "earthquakes", "photography", "cooking pasta",
    "social media", "the human heart", "hiking", "penguins", "budgeting",
    "renewable energy", "learning to swim", "museums", "thunderstorms", "houseplants",
    "the Olympic Games", "writing letters", "robots", "gardening", "jazz music",
    "the solar system", "trains", "friendship", "deserts", "first aid",
    "dinosaurs", "yoga", "climate change", "pizza", "school lunches",
    "birds migrating", "the telephone", "cats", "dogs", "the ocean",
    "running a marathon", "knitting", "bridges", "tea", "studying for exams",
    "the rainbow", "vegetarian food", "airplanes", "mountains", "playing the piano",
    "ants", "the Great Wall of China", "online shopping", "newspapers", "snow",
    "farming", "the periodic table", "clocks", "working from home", "football",
    "the stock market", "rivers", "painting", "sunflowers", "lighthouses",
    "sharks", "the Moon landing", "learning to code", "cheese making", "kindness",
    "airports", "fireworks", "the human brain", "fossils", "tidying a room",
    "electricity", "the Amazon river", "owls", "journaling", "street food",
    "the Sahara desert", "batteries", "moving to a new city", "wind turbines", "volleyball",
    "violins", "spiders", "saving energy at home", "ancient Egypt", "birthdays",
    "email etiquette", "glaciers", "magnets", "the post office", "rice",
    "job interviews", "octopuses", "reading before bed", "weather forecasts", "space telescopes",
    "apples", "city parks", "handwriting", "tree rings", "teamwork",
    "car maintenance", "dolphins", "local markets", "tunnels", "chocolate",
    "dental care", "hurricanes", "school uniforms", "the alphabet", "birdwatching",
    "skateboarding", "the Eiffel Tower", "mushrooms", "learning history", "cloud computing",
    "frogs", "podcasts", "picnics", "bamboo", "maps",
    "the sun", "lemons", "sign language", "ice cream", "rock climbing",
    "crossword puzzles", "elephants", "clean drinking water", "folk tales", "compasses",
    "traffic lights", "origami", "coral reefs", "music lessons", "umbrellas",
    "packing for a trip", "potatoes", "the wheel", "butterflies", "ice hockey",
)

TEST_EVERY = 4  # topic i is test-only when i % TEST_EVERY == TEST_EVERY - 1


def split_topics(split: str) -> tuple[str, ...]:
    """The topics of a split: "test" has every fourth topic, "train" and "validation" the rest."""
    if split not in ("train", "validation", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train', 'validation' or 'test'")
    is_test = split == "test"
    return tuple(t for i, t in enumerate(TOPICS) if (i % TEST_EVERY == TEST_EVERY - 1) == is_test)
