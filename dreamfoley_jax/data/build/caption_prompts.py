"""Every prompt the caption stage (captions.py) sends, in one place. A prompt's id (name@version) is stored
with each caption it produced (provenance); change the text => bump the version, so records built with
the old wording stay distinguishable (and the config hash changes, so a rerun into the same folder is
refused)."""

PROMPTS = {
    "audio_caption@1": (
        "Describe the sounds in this audio clip in one sentence: the sound sources, what they do and the "
        "acoustic setting. Do not mention speech content or music lyrics. Reply with the sentence only."),
    "video_caption@1": (
        "Describe in one sentence the visible objects and actions in this video that would make sound. "
        "Reply with the sentence only."),
    "consistency@1": (
        "An audio caption and a video caption describe the same 10-second clip.\n"
        "Audio caption: {audio}\nVideo caption: {video}\n"
        "Do they describe the same sound-producing events (the audio could plausibly come from the video)? "
        "Reply with one word: yes or no."),
    "integrate@1": (
        "Merge these two descriptions of one clip into a single caption of at most 30 words describing what "
        "is heard, using the video description only to name the sound sources. Reply with the caption only.\n"
        "Audio caption: {audio}\nVideo caption: {video}"),
}


def get(prompt_id: str) -> str:
  if prompt_id not in PROMPTS:
    raise KeyError(f"unknown caption prompt {prompt_id!r} (prompts: {', '.join(PROMPTS)})")
  return PROMPTS[prompt_id]
